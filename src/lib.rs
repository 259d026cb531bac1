//! Slipway: a bare-metal Kubernetes bootstrapper in one binary.

pub mod app;
pub mod boot;
pub mod client;
pub mod desc;
pub mod dhcp;
pub mod dns;
pub mod http;
pub mod pki;
pub mod plan;
pub mod registry;
pub mod render;
pub mod serve;
pub mod status;
pub mod store;
pub mod tftp;
