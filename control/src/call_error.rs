//! Why an API call failed: one variant per reason, whose `Display` is the
//! message the caller reads and whose [`CallError::code`] is the wire's
//! [`ErrorCode`]. The daemon's handlers return it; only the server's
//! answer turns it into a [`Response`].
//!
//! Invariant: the code depends on the variant alone (and, for an
//! interface failure, on the kind of failure), never on message text.
use std::net::Ipv4Addr;

use podrouter_api::{ErrorCode, InvalidIfname, Response};

use crate::daemon::PublishError;
use crate::ipam::IpamError;
use crate::podnet::PodNetError;
use crate::policy::StoreError;
use crate::reload::ReloadError;
use crate::state::StateError;

#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("pod id {0:?} must be 1-255 characters of letters, digits, '.', '_', ':' or '-'")]
    InvalidId(String),
    #[error(transparent)]
    InvalidIfname(#[from] InvalidIfname),
    #[error("pod {0} is already attached")]
    AlreadyAttached(String),
    #[error("network namespace {0} does not exist")]
    NetnsNotFound(String),
    #[error("{0} is podrouterd's own (the node's) network namespace, not a pod's")]
    OwnNetns(String),
    #[error(
        "network namespace {netns} already holds pod {pod} (interface {ifname}); podrouter \
         gives a pod one interface, a second would take over its routes: detach {pod} first"
    )]
    NetnsHasPod {
        netns: String,
        pod: String,
        ifname: String,
    },
    #[error("mtu {mtu} is out of range {min}..={max}")]
    MtuOutOfRange { mtu: u16, min: u16, max: u16 },
    #[error("mtu {mtu} is above the afxdp backend's {max}")]
    MtuAboveAfxdp { mtu: u16, max: u16 },
    #[error(transparent)]
    Address(#[from] IpamError),
    /// Creating the pod's interface failed.
    #[error("pod {id}: {source}")]
    Interface { id: String, source: PodNetError },
    /// No room in the port table, or no worker took the port.
    #[error(transparent)]
    Port(#[from] PublishError),
    #[error("host route to {ip}: {source}")]
    HostRoute { ip: Ipv4Addr, source: PodNetError },
    /// The attach was undone because the state file could not be written.
    #[error("pod {id}: not attached: {source}")]
    NotSaved { id: String, source: StateError },
    /// The pod left the data plane, but the state file still lists it
    /// (written again at the next call); a retry of the detach finds it
    /// gone.
    #[error("pod {id}: detached, but the state file was not written ({source}); retry to confirm")]
    DetachNotSaved { id: String, source: StateError },
    #[error("no pod with id {0}")]
    NoSuchPod(String),
    /// Looking for, or removing, an interface an attach left behind.
    #[error("{id}: {source}")]
    Orphan { id: String, source: PodNetError },
    #[error("{0}")]
    BadPrefix(String),
    #[error("BGP is not configured on this node (no [bgp] section)")]
    NoBgp,
    /// The BGP thread did not answer.
    #[error("{0}")]
    Bgp(String),
    #[error(transparent)]
    Reload(#[from] ReloadError),
    /// A policy, label or endpoint call was refused.
    #[error(transparent)]
    Policy(#[from] StoreError),
    /// A pod's identity (namespace, name, labels, named ports) at attach.
    #[error("pod {id}: identity: {source}")]
    Identity { id: String, source: StoreError },
    /// A built-in load balancer call was refused.
    #[error(transparent)]
    Service(#[from] crate::service::ServiceError),
}

impl CallError {
    /// The wire's error class.
    pub fn code(&self) -> ErrorCode {
        match self {
            CallError::InvalidId(_)
            | CallError::InvalidIfname(_)
            | CallError::OwnNetns(_)
            | CallError::MtuOutOfRange { .. }
            | CallError::MtuAboveAfxdp { .. }
            | CallError::BadPrefix(_) => ErrorCode::BadRequest,
            CallError::AlreadyAttached(_) | CallError::NetnsHasPod { .. } => {
                ErrorCode::AlreadyExists
            }
            CallError::NetnsNotFound(_) => ErrorCode::NetnsNotFound,
            CallError::Address(_) => ErrorCode::AddressUnavailable,
            CallError::Interface { source, .. } => match source {
                PodNetError::InterfaceExists { .. } => ErrorCode::AlreadyExists,
                PodNetError::NetnsNotFound { .. } => ErrorCode::NetnsNotFound,
                _ => ErrorCode::Internal,
            },
            CallError::NoSuchPod(_) | CallError::NoBgp => ErrorCode::NotFound,
            CallError::Port(_)
            | CallError::HostRoute { .. }
            | CallError::NotSaved { .. }
            | CallError::DetachNotSaved { .. }
            | CallError::Orphan { .. }
            | CallError::Bgp(_) => ErrorCode::Internal,
            CallError::Reload(e) => e.code(),
            CallError::Policy(e) | CallError::Identity { source: e, .. } => e.code(),
            CallError::Service(e) => e.code(),
        }
    }

    /// The error response for this failure.
    pub fn response(&self) -> Response {
        Response::err(self.code(), self.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_the_kind_of_failure() {
        let exists = CallError::Interface {
            id: "p".into(),
            source: PodNetError::InterfaceExists {
                netns: "/run/netns/x".into(),
                ifname: "eth0".into(),
            },
        };
        assert_eq!(exists.code(), ErrorCode::AlreadyExists);
        assert_eq!(
            exists.to_string(),
            "pod p: pod netns /run/netns/x already has an interface named eth0"
        );
        let other = CallError::Interface {
            id: "p".into(),
            source: PodNetError::Other("boom".into()),
        };
        assert_eq!(other.code(), ErrorCode::Internal);
        let r = CallError::NoSuchPod("x".into()).response();
        let e = r.error.unwrap();
        assert_eq!(
            (e.code, e.message.as_str()),
            (ErrorCode::NotFound, "no pod with id x")
        );
        assert_eq!(
            CallError::from(IpamError::InUse(Ipv4Addr::new(10, 0, 0, 1))).code(),
            ErrorCode::AddressUnavailable
        );
    }
}
