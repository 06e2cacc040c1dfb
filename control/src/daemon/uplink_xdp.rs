//! What `podrouterctl status` and `counters` show of the uplink's XDP
//! receive (`uplink_xdp`): one more entry in the status's port list and
//! in the AF_XDP socket counters, beside the pods' AF_XDP ports; and of
//! its IPIP GSO path (`ipip_gso`): whether it is on and what went that
//! way.
use podrouter_api::{IpipGsoInfo, PortStatusInfo, XskCountersInfo};
use podrouter_router::port::PortId;

use super::Daemon;

impl Daemon {
    /// The uplink's entry when its receive goes through XDP.
    pub(super) fn uplink_xdp_status(&self) -> Option<PortStatusInfo> {
        let u = self.uplink.as_ref()?;
        let x = u.xdp.as_ref()?;
        let id = self.ports.load().uplink_port()?;
        Some(PortStatusInfo {
            port: id.0,
            name: crate::uplink_setup::port_name(u.kind(), &u.ifname),
            backend: "afxdp".into(),
            xdp_mode: Some(x.mode().to_string()),
            xdp_prog_id: Some(x.prog_id()),
            xdp_ifname: Some(x.ifname().to_string()),
        })
    }

    /// The IPIP uplink's GSO path: on or off, and its counters.
    pub(super) fn ipip_gso_status(&self) -> Option<IpipGsoInfo> {
        let raw = self.uplink.as_ref()?.ipip.as_ref()?;
        Some(match raw.gso() {
            Some(g) => {
                let s = g.stats();
                IpipGsoInfo {
                    enabled: true,
                    tap: Some(g.name().to_string()),
                    prog_id: Some(g.prog_id()),
                    frames: s.frames,
                    bytes: s.bytes,
                    errors: s.errors,
                }
            }
            None => IpipGsoInfo::default(),
        })
    }

    /// The uplink's AF_XDP socket counters (summed over its queues).
    pub(super) fn uplink_xsk_counters(&self) -> Option<(PortId, XskCountersInfo)> {
        let x = self.uplink.as_ref()?.xdp.as_ref()?;
        let id = self.ports.load().uplink_port()?;
        let s = x.stats();
        Some((
            id,
            XskCountersInfo {
                rx_dropped: s.rx_dropped,
                rx_ring_full: s.rx_ring_full,
                rx_fill_empty: s.rx_fill_empty,
                tx_dropped: s.tx_dropped,
                rx_invalid: s.rx_invalid,
            },
        ))
    }
}
