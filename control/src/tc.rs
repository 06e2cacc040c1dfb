//! Traffic control over rtnetlink (no `tc` binary): the host port's root
//! qdisc (`noqueue`, see [`Netlink::root_noqueue`]), and the pieces of the
//! VXLAN uplink: a `clsact` qdisc on the underlay interface and one `u32`
//! filter at its ingress hook that redirects this node's VXLAN packets
//! (IPv4 without options, not a fragment, UDP, to the node's address and
//! the VXLAN port) to the egress of the uplink TAP, where podrouterd reads
//! them whole (GRO'd). Everything else on the interface is untouched.
//!
//! This kernel has `clsact`, `u32` and `mirred` but no `flower`;
//! netlink-packet-route expresses all three, so nothing shells out.
//!
//! Invariants: the filter lives at priority [`FILTER_PRIO`] alone, so
//! [`Netlink::vxlan_filter_del`] removes exactly what
//! [`Netlink::vxlan_filter_add`] made (and a leftover from a killed
//! daemon is replaced at the next start); the qdisc is shared with anyone
//! else's filters and is only removed by whoever created it. The host
//! port's root qdisc is replaced only where the kernel attached it (handle
//! `0:`); one someone added is left alone.
use std::io;
use std::net::Ipv4Addr;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::tc::{
    TcAction, TcActionAttribute, TcActionGeneric, TcActionMirrorOption, TcActionOption,
    TcActionType, TcAttribute, TcFilterU32Option, TcHandle, TcMessage, TcMirror,
    TcMirrorActionType, TcOption, TcU32Key, TcU32Selector, TcU32SelectorFlags,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::netlink::{errno, Netlink};

/// The filter's priority at the ingress hook (`tc filter show dev X
/// ingress` lists it as `pref 49200`).
pub const FILTER_PRIO: u16 = 49200;

/// `parent ffff:fff3`: the egress hook of `clsact`.
const EGRESS_HOOK: TcHandle = TcHandle {
    major: 0xffff,
    minor: TcHandle::MIN_EGRESS,
};

/// `ETH_P_IP` as tc wants it in `tcm_info`: network byte order.
const PROTO_IP_BE: u16 = 0x0800u16.to_be();

/// `parent ffff:fff2`: the ingress hook of `clsact`.
const INGRESS_HOOK: TcHandle = TcHandle {
    major: 0xffff,
    minor: TcHandle::MIN_INGRESS,
};

fn u32_key(off: i32, val: [u8; 4], mask: [u8; 4]) -> TcU32Key {
    let mut k = TcU32Key::default();
    k.off = off;
    k.val = u32::from_ne_bytes(val);
    k.mask = u32::from_ne_bytes(mask);
    k
}

/// The selector: IPv4 with IHL 5, no fragment, UDP, `dst`, port `port`.
fn vxlan_selector(dst: Ipv4Addr, port: u16) -> TcU32Selector {
    let p = port.to_be_bytes();
    let keys = vec![
        u32_key(0, [0x45, 0, 0, 0], [0xff, 0, 0, 0]),
        u32_key(4, [0, 0, 0, 0], [0, 0, 0x3f, 0xff]),
        u32_key(8, [0, 17, 0, 0], [0, 0xff, 0, 0]),
        u32_key(16, dst.octets(), [0xff; 4]),
        u32_key(20, [0, 0, p[0], p[1]], [0, 0, 0xff, 0xff]),
    ];
    let mut sel = TcU32Selector::default();
    sel.flags = TcU32SelectorFlags::Terminal;
    sel.nkeys = keys.len() as u8;
    sel.keys = keys;
    sel
}

/// `action mirred egress redirect dev <ifindex>`.
fn redirect_to(ifindex: u32) -> TcAction {
    let mut generic = TcActionGeneric::default();
    generic.action = TcActionType::Stolen;
    let mut mirror = TcMirror::default();
    mirror.generic = generic;
    mirror.eaction = TcMirrorActionType::EgressRedir;
    mirror.ifindex = ifindex;
    let mut a = TcAction::default();
    a.tab = 1;
    a.attributes = vec![
        TcActionAttribute::Kind("mirred".into()),
        TcActionAttribute::Options(vec![TcActionOption::Mirror(TcActionMirrorOption::Parms(
            mirror,
        ))]),
    ];
    a
}

fn msg(ifindex: u32) -> TcMessage {
    let mut m = TcMessage::default();
    m.header.family = AddressFamily::Unspec;
    m.header.index = ifindex as i32;
    m
}

/// The filter message (shared by add and delete).
fn filter_msg(ifindex: u32) -> TcMessage {
    let mut m = msg(ifindex);
    m.header.parent = INGRESS_HOOK;
    m.header.info = (u32::from(FILTER_PRIO) << 16) | u32::from(PROTO_IP_BE);
    m
}

impl Netlink {
    /// `tc qdisc add dev IFINDEX clsact`. Returns false if the interface
    /// already has one (or an `ingress` qdisc: both own the same hook).
    pub fn clsact_add(&mut self, ifindex: u32) -> io::Result<bool> {
        let mut m = msg(ifindex);
        m.header.parent = TcHandle::CLSACT;
        m.header.handle = TcHandle {
            major: 0xffff,
            minor: 0,
        };
        m.attributes.push(TcAttribute::Kind("clsact".into()));
        match self.ack(
            RouteNetlinkMessage::NewQueueDiscipline(m),
            NLM_F_CREATE | NLM_F_EXCL,
            || format!("add clsact qdisc on link {ifindex}"),
        ) {
            Ok(()) => Ok(true),
            Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// `tc qdisc del dev IFINDEX clsact` (gone already: fine).
    pub fn clsact_del(&mut self, ifindex: u32) -> io::Result<()> {
        let mut m = msg(ifindex);
        m.header.parent = TcHandle::CLSACT;
        m.header.handle = TcHandle {
            major: 0xffff,
            minor: 0,
        };
        m.attributes.push(TcAttribute::Kind("clsact".into()));
        match self.ack(RouteNetlinkMessage::DelQueueDiscipline(m), 0, || {
            format!("delete clsact qdisc on link {ifindex}")
        }) {
            Err(e) if matches!(errno(&e), Some(libc::ENOENT | libc::EINVAL | libc::ENODEV)) => {
                Ok(())
            }
            r => r,
        }
    }

    /// `tc filter add dev IFINDEX ingress prio 49200 protocol ip u32
    /// match <IPv4, no fragment, UDP, dst NODE, dport PORT> action mirred
    /// egress redirect dev TAP`, after removing whatever is at that
    /// priority.
    pub fn vxlan_filter_add(
        &mut self,
        ifindex: u32,
        node: Ipv4Addr,
        port: u16,
        tap_index: u32,
    ) -> io::Result<()> {
        self.vxlan_filter_del(ifindex)?;
        let mut m = filter_msg(ifindex);
        m.attributes.push(TcAttribute::Kind("u32".into()));
        m.attributes.push(TcAttribute::Options(vec![
            TcOption::U32(TcFilterU32Option::Selector(vxlan_selector(node, port))),
            TcOption::U32(TcFilterU32Option::Action(vec![redirect_to(tap_index)])),
        ]));
        self.ack(
            RouteNetlinkMessage::NewTrafficFilter(m),
            NLM_F_CREATE | NLM_F_EXCL,
            || format!("add the VXLAN redirect filter on link {ifindex}"),
        )
    }

    /// Removes the filter at [`FILTER_PRIO`] of the ingress hook (none
    /// there, or no qdisc: fine).
    pub fn vxlan_filter_del(&mut self, ifindex: u32) -> io::Result<()> {
        self.vxlan_filter_remove(ifindex).map(|_| ())
    }

    /// [`Netlink::vxlan_filter_del`], telling whether there was one.
    pub fn vxlan_filter_remove(&mut self, ifindex: u32) -> io::Result<bool> {
        match self.ack(
            RouteNetlinkMessage::DelTrafficFilter(filter_msg(ifindex)),
            0,
            || format!("delete the VXLAN redirect filter on link {ifindex}"),
        ) {
            Ok(()) => Ok(true),
            Err(e) if matches!(errno(&e), Some(libc::ENOENT | libc::EINVAL | libc::ENODEV)) => {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// The kind of link `ifindex`'s root qdisc and whether the kernel
    /// attached it by itself (handle `0:`, what a device gets when it comes
    /// up: `pfifo_fast`, `mq`, the `net.core.default_qdisc`); `None` if the
    /// dump lists no root qdisc for it.
    pub fn root_qdisc(&mut self, ifindex: u32) -> io::Result<Option<(String, bool)>> {
        let replies = self
            .transact(RouteNetlinkMessage::GetQueueDiscipline(msg(0)), NLM_F_DUMP)
            .map_err(|e| e.with_op("list qdiscs".into()))?;
        Ok(replies.iter().find_map(|r| match r {
            RouteNetlinkMessage::NewQueueDiscipline(q)
                if q.header.index == ifindex as i32 && q.header.parent == TcHandle::ROOT =>
            {
                let kind = q.attributes.iter().find_map(|a| match a {
                    TcAttribute::Kind(k) => Some(k.clone()),
                    _ => None,
                })?;
                Some((kind, q.header.handle == TcHandle::UNSPEC))
            }
            _ => None,
        }))
    }

    /// `tc qdisc replace dev IFINDEX root noqueue`: frames sent on the
    /// device go straight to its driver, with no queue in between.
    pub fn root_noqueue(&mut self, ifindex: u32) -> io::Result<()> {
        let mut m = msg(ifindex);
        m.header.parent = TcHandle::ROOT;
        m.header.handle = TcHandle::UNSPEC;
        m.attributes.push(TcAttribute::Kind("noqueue".into()));
        self.ack(
            RouteNetlinkMessage::NewQueueDiscipline(m),
            NLM_F_CREATE | NLM_F_REPLACE,
            || format!("set the noqueue qdisc on link {ifindex}"),
        )
    }

    /// Whether link `ifindex` has a `clsact` qdisc.
    pub fn clsact_present(&mut self, ifindex: u32) -> io::Result<bool> {
        let replies = self
            .transact(RouteNetlinkMessage::GetQueueDiscipline(msg(0)), NLM_F_DUMP)
            .map_err(|e| e.with_op("list qdiscs".into()))?;
        Ok(replies.iter().any(|r| match r {
            RouteNetlinkMessage::NewQueueDiscipline(q) => {
                q.header.index == ifindex as i32
                    && q.attributes
                        .iter()
                        .any(|a| matches!(a, TcAttribute::Kind(k) if k == "clsact"))
            }
            _ => false,
        }))
    }

    /// Whether either hook of link `ifindex`'s `clsact` holds any filter
    /// (no qdisc: false).
    pub fn clsact_has_filters(&mut self, ifindex: u32) -> io::Result<bool> {
        for hook in [INGRESS_HOOK, EGRESS_HOOK] {
            let mut m = msg(ifindex);
            m.header.parent = hook;
            match self.transact(RouteNetlinkMessage::GetTrafficFilter(m), NLM_F_DUMP) {
                Ok(replies) => {
                    if replies
                        .iter()
                        .any(|r| matches!(r, RouteNetlinkMessage::NewTrafficFilter(_)))
                    {
                        return Ok(true);
                    }
                }
                Err(e) if matches!(e.errno(), Some(libc::EINVAL | libc::ENOENT)) => {}
                Err(e) => return Err(e.with_op(format!("list filters of link {ifindex}"))),
            }
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_utils::Emitable;

    /// The selector in the kernel's byte layout, key by key, as
    /// `tc filter add ... u32 match ip protocol 17 0xff match ip dst
    /// 192.168.100.2/32 match ip dport 8472 0xffff` spells it (values and
    /// masks in network order).
    #[test]
    fn selector_golden_bytes() {
        let sel = vxlan_selector(Ipv4Addr::new(192, 168, 100, 2), 8472);
        let mut b = vec![0u8; sel.buffer_len()];
        sel.emit(&mut b);
        #[rustfmt::skip]
        let want: Vec<u8> = vec![
            1, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            0xff, 0, 0, 0,  0x45, 0, 0, 0,  0, 0, 0, 0,  0, 0, 0, 0,
            0, 0, 0x3f, 0xff,  0, 0, 0, 0,  4, 0, 0, 0,  0, 0, 0, 0,
            0, 0xff, 0, 0,  0, 17, 0, 0,  8, 0, 0, 0,  0, 0, 0, 0,
            0xff, 0xff, 0xff, 0xff,  192, 168, 100, 2,  16, 0, 0, 0,  0, 0, 0, 0,
            0, 0, 0xff, 0xff,  0, 0, 0x21, 0x18,  20, 0, 0, 0,  0, 0, 0, 0,
        ];
        assert_eq!(b, want);
    }
}
