//! What `podrouterctl status` shows of the afxdp backend's UMEM memory:
//! the data plane's own tally of what its AF_XDP sockets mapped (receive
//! UMEMs per pod port and uplink queue, transmit UMEMs per worker).
use podrouter_api::UmemInfo;

use super::Daemon;
use crate::config::Backend;

impl Daemon {
    /// The UMEM figures, when the afxdp backend or `uplink_xdp` is in use.
    pub(super) fn umem_status(&self) -> Option<UmemInfo> {
        let dp = &self.cfg.dataplane;
        if dp.backend != Backend::Afxdp && !dp.uplink_xdp {
            return None;
        }
        let u = podrouter_router::afxdp::umem_use();
        Some(UmemInfo {
            rx_umems: u.rx_umems,
            rx_bytes: u.rx_bytes,
            tx_umems: u.tx_umems,
            tx_bytes: u.tx_bytes,
            rx_chunks_per_port: podrouter_router::afxdp::standing_chunks(
                dp.mtu,
                dp.afxdp_rx_chunks,
            ),
        })
    }
}
