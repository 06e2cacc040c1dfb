//! Value types every podrouter crate shares (the data plane, the control
//! plane, the BGP codec, IPAM, the CNI plugin, fuzzers, benches, tests),
//! in a crate of their own so none of them links the data plane for one
//! value type.
//!
//! Invariants: std only, no I/O, no allocation except in error messages.
#![forbid(unsafe_code)]

pub mod prefix;

pub use prefix::{Prefix, PrefixError};
