//! GC's set logic: which of the daemon's attachments are stale.
use std::collections::BTreeSet;

use podrouter_api::PodInfo;

use crate::env::parse_attach_id;
use crate::netconf::Attachment;

/// The attachments this plugin made (`cni:` ids) that are not in `valid`.
/// Attachments made by anything else (podrouterctl, other tools) are never
/// touched.
pub fn stale<'a>(pods: &'a [PodInfo], valid: &BTreeSet<Attachment>) -> Vec<&'a PodInfo> {
    pods.iter()
        .filter(|p| match parse_attach_id(&p.id) {
            Some((cid, ifname)) => !valid.contains(&Attachment {
                container_id: cid.to_string(),
                ifname: ifname.to_string(),
            }),
            None => false,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn pod(id: &str) -> PodInfo {
        PodInfo {
            id: id.into(),
            netns: "/run/netns/x".into(),
            ifname: "eth0".into(),
            ip: Ipv4Addr::new(10, 244, 0, 2),
            mac: "m".into(),
            mtu: 1480,
            port: 1,
            worker: 0,
        }
    }

    fn att(c: &str, i: &str) -> Attachment {
        Attachment {
            container_id: c.into(),
            ifname: i.into(),
        }
    }

    #[test]
    fn only_unlisted_cni_attachments_are_stale() {
        let pods = vec![
            pod("cni:a:eth0"),
            pod("cni:a:net1"),
            pod("cni:b:eth0"),
            pod("manual-pod"),
            pod("cni:weird"),
        ];
        let valid: BTreeSet<_> = [att("a", "eth0"), att("zzz", "eth0")].into();
        let ids: Vec<&str> = stale(&pods, &valid).iter().map(|p| p.id.as_str()).collect();
        assert_eq!(ids, vec!["cni:a:net1", "cni:b:eth0"]);
    }

    #[test]
    fn empty_valid_set_removes_every_cni_attachment_and_nothing_else() {
        let pods = vec![pod("cni:a:eth0"), pod("x")];
        assert_eq!(stale(&pods, &BTreeSet::new()).len(), 1);
        assert!(stale(&[], &BTreeSet::new()).is_empty());
    }

    #[test]
    fn everything_listed_means_nothing_stale() {
        let pods = vec![pod("cni:a:eth0"), pod("cni:b:eth1")];
        let valid: BTreeSet<_> = [att("a", "eth0"), att("b", "eth1")].into();
        assert!(stale(&pods, &valid).is_empty());
    }
}
