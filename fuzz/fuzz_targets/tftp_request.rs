//! The TFTP request path without sockets, on arbitrary bytes: decode; for a read request,
//! confine the name and negotiate its options, encode the OACK and decode it back; then
//! drive a transfer's state machine with the rest of the input as ACK numbers and clock
//! steps. It must never panic, the name must stay relative and free of `..`, the block
//! size must respect the MTU, and the transfer must never send a block past the last one.
#![no_main]

use std::path::Component;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use slipway::tftp::options::{Limits, negotiate};
use slipway::tftp::packet::{self, Packet};
use slipway::tftp::path::sanitize;
use slipway::tftp::transfer::{Step, Transfer, block_count};

fuzz_target!(|data: &[u8]| {
    let (head, tail) = data.split_at(data.len().min(96));
    let Ok(Packet::Rrq(req)) = packet::parse(head) else {
        return;
    };
    if let Ok(rel) = sanitize(&req.filename) {
        assert!(rel.is_relative());
        assert!(rel.components().all(|c| matches!(c, Component::Normal(_))));
    }
    // The file size comes from the input too, small enough to finish quickly.
    let size = tail.first().map_or(0, |&b| u64::from(b) * 97);
    let limits = Limits::from_mtu(1500);
    let neg = negotiate(&req.options, size, limits);
    assert!(neg.blksize >= 8 && neg.blksize <= 1468);
    assert!(neg.windowsize >= 1);
    let mut oack = Vec::new();
    packet::encode_oack(&neg.oack, &mut oack);
    if !neg.oack.is_empty() {
        let Ok(Packet::Oack(back)) = packet::parse(&oack) else {
            panic!("OACK does not decode")
        };
        assert_eq!(back.len(), neg.oack.len());
    }
    let mut now = Instant::now();
    let (mut t, mut step) = Transfer::start(&neg, size, now);
    let last = block_count(size, neg.blksize);
    for pair in tail.chunks(2) {
        if let Step::Blocks(r) = &step {
            assert!(*r.start() >= 1 && r.start() <= r.end() && *r.end() <= last);
        }
        if matches!(step, Step::Done | Step::TimedOut) {
            return;
        }
        step = match pair {
            [a, b] => t.on_ack(u16::from_be_bytes([*a, *b]), now),
            _ => {
                now += Duration::from_secs(9);
                t.on_timeout(now)
            }
        };
    }
});
