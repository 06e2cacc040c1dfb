//! podrouter-cni: the CNI plugin (spec 1.1.0, also 0.3.0-1.0.0) that
//! attaches pods to podrouterd through its API socket.
//!
//! The binary is thin (`main.rs`); [`plugin::run`] takes the environment
//! and stdin and returns what to print and the exit status, so tests drive
//! it in-process as well as through the binary.
//!
//! Modules: [`env`] (CNI_* variables), [`netconf`] (stdin), [`result`]
//! (results per version), [`error`] (error results and codes), [`router`]
//! (podrouterd), [`ipam`] (delegated IPAM plugins), [`pending`] (DELs made
//! while the router was down), [`netns`] (CHECK's look inside the pod),
//! [`gc`] (which attachments GC removes), [`plugin`] (the verbs).
#![forbid(unsafe_code)]

pub mod env;
pub mod error;
pub mod gc;
pub mod identity;
pub mod ipam;
pub mod log;
pub mod netconf;
pub mod netns;
pub mod pending;
pub mod plugin;
pub mod result;
pub mod router;
