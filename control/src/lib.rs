//! podrouter's control plane: config, IPAM, persisted state, pod and host
//! interface plumbing (netlink, netns, TAP), the API server and the daemon
//! that ties them to the data plane.
//!
//! `unsafe` lives only in [`sys`].
#![deny(unsafe_code)]

pub mod bgp;
pub mod call_error;
pub mod config;
pub mod daemon;
pub mod durable;
pub mod ipam;
pub mod kernel_job;
pub mod logger;
pub mod metrics;
pub mod netlink;
pub mod netns;
pub mod nodenet;
pub mod op_stats;
pub mod own_cores;
pub mod podnet;
pub mod policy;
pub mod reload;
pub mod sd_notify;
pub mod server;
pub mod service;
pub mod state;
#[allow(unsafe_code)]
pub mod sys;
pub mod takeover;
pub mod tap_stream;
pub mod tc;
pub mod uninstall;
pub mod uplink_setup;
pub mod vxlan_setup;
