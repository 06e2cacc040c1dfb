//! podrouter's data plane: packet views, the FIB, the per-frame pipeline,
//! ports (TAP, in-memory, the IPIP uplink) and the workers that poll them.
//!
//! Invariants: nothing here allocates, locks or logs per packet on the
//! forwarding path; the pipeline does no I/O (it turns a frame into a
//! verdict); `unsafe` lives only in [`sys`].
#![deny(unsafe_code)]

pub mod afxdp;
pub mod bpf;
pub mod busy_poll;
pub mod capture;
pub mod clock;
pub mod conntrack;
pub mod counters;
pub mod encap;
pub mod fib;
pub mod frame;
pub mod gso;
pub mod ipip_gso;
pub mod maglev;
pub mod mq;
pub mod pipeline;
pub mod pmtu;
pub mod policy;
pub mod port;
pub mod service;
#[allow(unsafe_code)]
pub mod sys;
pub mod tap;
pub mod txring;
pub mod uplink;
pub mod vxlan;
pub mod vxlan_port;
pub mod wire;
pub mod worker;
pub mod xdp_uplink;

use std::net::Ipv4Addr;

/// The MAC address the router answers every ARP with (Calico's choice).
pub const ROUTER_MAC: [u8; 6] = [0xee; 6];

/// The link-local gateway every pod routes through.
pub const GATEWAY_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
