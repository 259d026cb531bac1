//! TFTP, read-only (RFC 1350 with options: blksize, tsize, timeout, windowsize), for the
//! firmware leg of the boot chain: PXE ROMs and UEFI fetch the iPXE binaries here.
//!
//! Layers: `packet` is the wire format (pure, never panics: the fuzz target), `options`
//! the negotiation, `transfer` the per-transfer state machine (windowing, rollover,
//! retransmission; pure, driven with an explicit clock), `path` confines names to the boot
//! roots, `source` reads windows from a file, `server` moves packets.

mod mmsg;
pub mod options;
pub mod packet;
pub mod path;
pub mod queue;
mod server;
pub mod source;
pub mod transfer;

pub use path::roots;
pub use server::{Config, DEFAULT_MAX_TRANSFERS, Stats, bind, serve};
