//! DHCPv4: authoritative (reservations from the description, a dynamic pool per the
//! unknown-machine policy), ProxyDHCP beside an existing server, and relayed requests.
//! `packet` is the wire format, `engine` the decisions, `leases` the allocator, `server` the
//! sockets and the group-committing writer.

pub mod boot;
pub mod engine;
pub mod leases;
mod mmsg;
pub mod ntp;
pub mod packet;
pub mod server;
pub mod unknown;

pub use server::{Handle, Sockets, Stats, bind, spawn};
