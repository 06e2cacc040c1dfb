//! Talking to podrouterd: one short connection per step (the daemon serves
//! one connection at a time, so none is held open across a slow step such
//! as running an IPAM plugin), and what its answers mean in CNI terms.
use std::path::{Path, PathBuf};
use std::time::Duration;

use podrouter_api::{
    AttachParams, Call, Client, ClientError, DetachParams, ErrorCode, PodInfo, Reply, StatusInfo,
};

use crate::error::{CniError, Code};

/// How long one request may wait for its answer. The daemon serves
/// requests one after another, so under a burst of ADDs an answer can take
/// a while; this bounds a hung daemon, not a busy one.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// What went wrong talking to the daemon.
#[derive(Debug)]
pub enum RouterError {
    /// Nothing answers on the socket: nothing happened.
    Unreachable { socket: PathBuf, why: String },
    /// The connection broke or timed out mid-request, or the answer was
    /// garbled: the request may or may not have taken effect.
    Broken { socket: PathBuf, why: String },
    /// The daemon answered with an error: nothing changed.
    Refused { code: ErrorCode, message: String },
}

impl RouterError {
    fn from_client(socket: &Path, e: ClientError) -> Self {
        match e {
            ClientError::Connect { source, .. } => RouterError::Unreachable {
                socket: socket.to_owned(),
                why: source.to_string(),
            },
            ClientError::Io(e) => RouterError::Broken {
                socket: socket.to_owned(),
                why: e.to_string(),
            },
            ClientError::Protocol(m) => RouterError::Broken {
                socket: socket.to_owned(),
                why: m,
            },
            ClientError::Api(a) => RouterError::Refused {
                code: a.code,
                message: a.message,
            },
        }
    }

    /// Unreachable or broken: the daemon is down or went down.
    pub fn is_down(&self) -> bool {
        matches!(
            self,
            RouterError::Unreachable { .. } | RouterError::Broken { .. }
        )
    }

    /// The CNI error for a failed `verb` (ADD, CHECK, GC...).
    pub fn to_cni(&self, verb: &str) -> CniError {
        match self {
            RouterError::Unreachable { socket, why } => CniError::new(
                Code::TryAgainLater,
                "podrouterd is not reachable",
                format!(
                    "{verb}: cannot connect to {} ({why}); start podrouterd (or check \
                     \"router_socket\" in the network configuration) and retry",
                    socket.display()
                ),
            ),
            RouterError::Broken { socket, why } => CniError::new(
                Code::TryAgainLater,
                "podrouterd stopped answering",
                format!(
                    "{verb}: the request to {} failed ({why}); check podrouterd's log and retry",
                    socket.display()
                ),
            ),
            RouterError::Refused { code, message } => {
                let c = match code {
                    ErrorCode::AlreadyExists => Code::AlreadyExists,
                    ErrorCode::AddressUnavailable => Code::AddressUnavailable,
                    ErrorCode::NetnsNotFound => Code::UnknownContainer,
                    ErrorCode::BadRequest => Code::InvalidConfig,
                    ErrorCode::Busy => Code::TryAgainLater,
                    _ => Code::Daemon,
                };
                let hint = match code {
                    ErrorCode::AlreadyExists => {
                        "; the container already has this interface: DEL it first"
                    }
                    ErrorCode::UnsupportedVersion => {
                        "; podrouter-cni and podrouterd are different releases: install matching versions"
                    }
                    ErrorCode::AddressUnavailable => {
                        "; free addresses with DEL or GC, or give the node more pod_cidrs"
                    }
                    _ => "",
                };
                CniError::new(
                    c,
                    format!("podrouterd refused {verb}"),
                    format!("{message} ({code}){hint}"),
                )
            }
        }
    }
}

/// A connection to podrouterd.
pub struct Router {
    client: Client,
    socket: PathBuf,
}

impl Router {
    pub fn connect(socket: &Path) -> Result<Router, RouterError> {
        Client::connect(socket, TIMEOUT)
            .map(|client| Router {
                client,
                socket: socket.to_owned(),
            })
            .map_err(|e| RouterError::from_client(socket, e))
    }

    fn call(&mut self, call: Call) -> Result<Reply, RouterError> {
        self.client
            .call(call)
            .map_err(|e| RouterError::from_client(&self.socket, e))
    }

    fn unexpected(&self, r: Reply) -> RouterError {
        RouterError::Broken {
            socket: self.socket.clone(),
            why: format!("unexpected answer {r:?}"),
        }
    }

    pub fn attach(&mut self, p: AttachParams) -> Result<PodInfo, RouterError> {
        match self.call(Call::Attach(p))? {
            Reply::Pod(p) => Ok(p),
            r => Err(self.unexpected(r)),
        }
    }

    /// Detaches; `Ok(false)` if the daemon had nothing to remove.
    pub fn detach(
        &mut self,
        id: &str,
        netns: Option<&str>,
        ifname: Option<&str>,
    ) -> Result<bool, RouterError> {
        let p = DetachParams {
            id: id.to_string(),
            netns: netns.map(str::to_string),
            ifname: ifname.map(str::to_string),
        };
        match self.call(Call::Detach(p)) {
            Ok(_) => Ok(true),
            Err(RouterError::Refused {
                code: ErrorCode::NotFound,
                ..
            }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub fn pods(&mut self) -> Result<Vec<PodInfo>, RouterError> {
        match self.call(Call::ListPods)? {
            Reply::Pods(p) => Ok(p),
            r => Err(self.unexpected(r)),
        }
    }

    pub fn status(&mut self) -> Result<StatusInfo, RouterError> {
        match self.call(Call::Status)? {
            Reply::Status(s) => Ok(s),
            r => Err(self.unexpected(r)),
        }
    }
}
