//! Delegation to an IPAM plugin (spec section 4): found through CNI_PATH,
//! run with this plugin's environment (the verb possibly changed) and the
//! same network configuration on stdin, its stderr passed through.
use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};

use serde_json::Value;

use crate::error::{CniError, CniResult, Code};
use crate::result::AddResult;

/// Finds an executable named `plugin` in the CNI_PATH directories.
pub fn find_plugin(plugin: &str, path: &[String]) -> CniResult<PathBuf> {
    if path.is_empty() {
        return Err(CniError::new(
            Code::InvalidEnv,
            "invalid CNI environment variables",
            format!("CNI_PATH is not set, so the IPAM plugin {plugin:?} cannot be found"),
        ));
    }
    for dir in path {
        let p = Path::new(dir).join(plugin);
        if let Ok(m) = std::fs::metadata(&p) {
            if m.is_file() && m.permissions().mode() & 0o111 != 0 {
                return Ok(p);
            }
        }
    }
    Err(CniError::new(
        Code::InvalidConfig,
        "IPAM plugin not found",
        format!(
            "no executable {plugin:?} in CNI_PATH ({}); install it there or fix \"ipam\".\"type\"",
            path.join(":")
        ),
    ))
}

/// How to run one delegated call.
pub struct Delegate<'a> {
    pub plugin: &'a str,
    pub path: &'a [String],
    /// The environment this plugin got.
    pub env: &'a HashMap<String, String>,
}

impl Delegate<'_> {
    /// Runs the plugin with `CNI_COMMAND=command` and `overrides` applied to
    /// the environment (`None` removes a variable). Returns its stdout on
    /// success, or the error it reported.
    pub fn run(
        &self,
        command: &str,
        overrides: &[(&str, Option<&str>)],
        stdin: &[u8],
    ) -> CniResult<Vec<u8>> {
        let exe = find_plugin(self.plugin, self.path)?;
        let mut cmd = Process::new(&exe);
        cmd.env_clear()
            .envs(self.env)
            .env("CNI_COMMAND", command)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in overrides {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        let io_err = |what: &str, e: std::io::Error| {
            CniError::new(
                Code::Io,
                format!("running IPAM plugin {}", self.plugin),
                format!("{what} {}: {e}", exe.display()),
            )
        };
        let mut child = cmd.spawn().map_err(|e| io_err("cannot start", e))?;
        let mut child_in = child.stdin.take().expect("piped stdin");
        let mut child_out = child.stdout.take().expect("piped stdout");
        let mut out = Vec::new();
        // Write stdin and read stdout at the same time so neither side can
        // block on a full pipe.
        let read = std::thread::scope(|s| {
            let writer = s.spawn(move || {
                let _ = child_in.write_all(stdin);
                // child_in dropped here: EOF for the plugin.
            });
            let r = child_out.read_to_end(&mut out);
            let _ = writer.join();
            r
        });
        let status = child.wait().map_err(|e| io_err("waiting for", e))?;
        read.map_err(|e| io_err("reading the output of", e))?;
        if status.success() {
            return Ok(out);
        }
        let text = String::from_utf8_lossy(&out);
        match serde_json::from_slice::<Value>(&out) {
            Ok(v) if v.get("code").and_then(Value::as_u64).is_some() => {
                let code = v["code"].as_u64().unwrap_or(0);
                Err(CniError::from_delegate(
                    self.plugin,
                    u32::try_from(code).unwrap_or(Code::Delegate as u32),
                    v.get("msg").and_then(Value::as_str).unwrap_or("failed"),
                    v.get("details").and_then(Value::as_str).unwrap_or(""),
                ))
            }
            _ => Err(CniError::new(
                Code::Delegate,
                format!("IPAM plugin {} failed", self.plugin),
                format!(
                    "{command} exited with {status} and no CNI error on stdout{}",
                    if text.trim().is_empty() {
                        String::new()
                    } else {
                        format!(": {}", text.trim())
                    }
                ),
            )),
        }
    }

    /// ADD: the address the IPAM plugin hands out.
    pub fn add(&self, stdin: &[u8]) -> CniResult<AddResult> {
        let out = self.run("ADD", &[], stdin)?;
        let v: Value = serde_json::from_slice(&out).map_err(|e| {
            CniError::new(
                Code::Decode,
                format!("failed to decode the result of IPAM plugin {}", self.plugin),
                format!("{e}: {}", String::from_utf8_lossy(&out).trim()),
            )
        })?;
        AddResult::from_value(&v, &format!("the result of IPAM plugin {}", self.plugin))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    use podrouter_testkit::TempDir;

    fn script(dir: &Path, name: &str, body: &str) {
        let p = dir.join(name);
        fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn lookup_needs_cni_path_and_an_executable() {
        let tmp = TempDir::new("ipam");
        let d = tmp.path().to_path_buf();
        fs::write(d.join("notexec"), "x").unwrap();
        assert_eq!(find_plugin("x", &[]).unwrap_err().code, 4);
        let dirs = vec!["/nonexistent".to_string(), d.display().to_string()];
        assert_eq!(find_plugin("notexec", &dirs).unwrap_err().code, 7);
        script(&d, "ok", "true");
        assert_eq!(find_plugin("ok", &dirs).unwrap(), d.join("ok"));
        fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn delegate_gets_env_and_stdin_and_its_errors_come_back() {
        let tmp = TempDir::new("ipam");
        let d = tmp.path().to_path_buf();
        // Echoes its verb, a variable and stdin, so the test sees what it got.
        script(
            &d,
            "echoer",
            r#"in=$(cat); printf '{"cniVersion":"1.0.0","ips":[{"address":"10.1.2.3/24"}],"dns":{"domain":"%s-%s-%s"}}' "$CNI_COMMAND" "$CNI_CONTAINERID" "$in""#,
        );
        script(
            &d,
            "failer",
            r#"echo '{"cniVersion":"1.0.0","code":7,"msg":"no range","details":"range exhausted"}'; exit 1"#,
        );
        script(&d, "crasher", "echo oops >&2; echo garbage; exit 3");
        let path = vec![d.display().to_string()];
        let env: HashMap<String, String> =
            [("CNI_CONTAINERID".to_string(), "c1".to_string())].into();
        let del = Delegate {
            plugin: "echoer",
            path: &path,
            env: &env,
        };
        let r = del.add(b"X").unwrap();
        assert_eq!(r.dns.domain.as_deref(), Some("ADD-c1-X"));
        let out = del
            .run("DEL", &[("CNI_CONTAINERID", Some("c2"))], b"Y")
            .unwrap();
        assert!(String::from_utf8_lossy(&out).contains("DEL-c2-Y"));

        let e = Delegate {
            plugin: "failer",
            path: &path,
            env: &env,
        }
        .add(b"{}")
        .unwrap_err();
        assert_eq!((e.code, e.details.as_str()), (7, "range exhausted"));
        assert!(e.msg.contains("failer"));
        let e = Delegate {
            plugin: "crasher",
            path: &path,
            env: &env,
        }
        .add(b"{}")
        .unwrap_err();
        assert_eq!(e.code, 104);
        assert!(e.details.contains("garbage"), "{e}");
        fs::remove_dir_all(d).unwrap();
    }
}
