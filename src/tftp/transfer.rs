//! One read transfer as a pure state machine: which blocks to send next, given the ACKs
//! and timeouts seen. No sockets and no clock of its own (the caller passes `now`), so the
//! windowing, rollover and retransmission rules are unit-tested directly.
//!
//! Blocks are numbered from 1 with 64-bit counters here; only the wire carries the 16-bit
//! number, which wraps from 65535 to 0 (what tftp-hpa, atftp, iPXE and EDK2 expect).

use std::ops::RangeInclusive;
use std::time::{Duration, Instant};

use super::options::Negotiated;

/// Retransmissions of one window before the transfer is given up.
pub const MAX_RETRIES: u32 = 5;
/// The retransmission timeout doubles per retry up to this.
pub const MAX_RTO: Duration = Duration::from_secs(8);

/// What the server must do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Send (or resend) the OACK.
    Oack,
    /// Send these blocks (absolute numbers) as one burst.
    Blocks(RangeInclusive<u64>),
    /// Nothing to send; keep waiting until `deadline()`.
    Wait,
    /// The client acknowledged the last block.
    Done,
    /// The client stopped answering.
    TimedOut,
}

#[derive(Debug, Clone)]
pub struct Transfer {
    blksize: u64,
    window: u64,
    /// Number of the final block; it is shorter than `blksize` (possibly empty).
    last: u64,
    /// Highest block the client acknowledged (0 before any).
    acked: u64,
    /// Highest block sent.
    sent: u64,
    /// Waiting for the ACK of the OACK (block 0).
    awaiting_oack: bool,
    base_rto: Duration,
    rto: Duration,
    retries: u32,
    deadline: Instant,
}

/// The 16-bit block number on the wire for absolute block `n`.
pub fn wire_block(n: u64) -> u16 {
    n as u16
}

/// Number of blocks needed for `size` bytes: always one more than fits whole, since a
/// transfer ends with a block shorter than `blksize` (empty when the size is a multiple).
pub fn block_count(size: u64, blksize: u16) -> u64 {
    size / u64::from(blksize) + 1
}

impl Transfer {
    /// Starts a transfer of `size` bytes; returns it with the first thing to send.
    pub fn start(neg: &Negotiated, size: u64, now: Instant) -> (Transfer, Step) {
        let mut t = Transfer {
            blksize: u64::from(neg.blksize),
            window: u64::from(neg.windowsize.max(1)),
            last: block_count(size, neg.blksize),
            acked: 0,
            sent: 0,
            awaiting_oack: !neg.oack.is_empty(),
            base_rto: neg.timeout,
            rto: neg.timeout,
            retries: 0,
            deadline: now + neg.timeout,
        };
        let step = if t.awaiting_oack {
            Step::Oack
        } else {
            t.next_window(now)
        };
        (t, step)
    }

    /// When to call `on_timeout` if nothing arrives.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Byte range in the file of absolute block `n` (the last one may be short or empty).
    pub fn byte_range(&self, n: u64, size: u64) -> (u64, usize) {
        let start = (n - 1).saturating_mul(self.blksize).min(size);
        let len = self.blksize.min(size - start);
        (start, len as usize)
    }

    pub fn blksize(&self) -> usize {
        self.blksize as usize
    }

    pub fn is_awaiting_oack(&self) -> bool {
        self.awaiting_oack
    }

    fn next_window(&mut self, now: Instant) -> Step {
        let first = self.acked + 1;
        let end = (self.acked + self.window).min(self.last);
        self.sent = end;
        self.retries = 0;
        self.rto = self.base_rto;
        self.deadline = now + self.rto;
        Step::Blocks(first..=end)
    }

    /// The client acknowledged wire block `block`.
    ///
    /// An ACK inside the window moves it (RFC 7440: the client acknowledges what it got in
    /// order, and the server goes on from there). A repeated or stale ACK is ignored: the
    /// timer resends, which avoids the Sorcerer's Apprentice doubling of RFC 1123.
    pub fn on_ack(&mut self, block: u16, now: Instant) -> Step {
        if self.awaiting_oack {
            if block != 0 {
                return Step::Wait;
            }
            self.awaiting_oack = false;
            return self.next_window(now);
        }
        // Blocks in flight are acked+1 ..= sent (at most 65535 of them), so a wire number
        // names exactly one of them.
        let ahead = u64::from(block.wrapping_sub(wire_block(self.acked)));
        if ahead == 0 || ahead > self.sent - self.acked {
            return Step::Wait;
        }
        self.acked += ahead;
        if self.acked == self.last {
            return Step::Done;
        }
        self.next_window(now)
    }

    /// Nothing arrived by `deadline()`: resend what is unacknowledged with a doubled
    /// timeout, or give up after [`MAX_RETRIES`].
    pub fn on_timeout(&mut self, now: Instant) -> Step {
        if now < self.deadline {
            return Step::Wait;
        }
        if self.retries >= MAX_RETRIES {
            return Step::TimedOut;
        }
        self.retries += 1;
        self.rto = (self.rto * 2).min(MAX_RTO.max(self.base_rto));
        self.deadline = now + self.rto;
        if self.awaiting_oack {
            Step::Oack
        } else {
            Step::Blocks(self.acked + 1..=self.sent)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn neg(blksize: u16, windowsize: u16, oack: bool) -> Negotiated {
        Negotiated {
            blksize,
            windowsize,
            timeout: Duration::from_secs(1),
            oack: if oack {
                vec![("tsize", "0".into())]
            } else {
                vec![]
            },
        }
    }

    #[test]
    fn lock_step_without_options() {
        let now = Instant::now();
        let (mut t, step) = Transfer::start(&neg(512, 1, false), 1000, now);
        assert_eq!(step, Step::Blocks(1..=1));
        assert_eq!(t.byte_range(1, 1000), (0, 512));
        assert_eq!(t.on_ack(1, now), Step::Blocks(2..=2));
        assert_eq!(t.byte_range(2, 1000), (512, 488));
        assert_eq!(t.on_ack(1, now), Step::Wait, "duplicate ACK ignored");
        assert_eq!(t.on_ack(2, now), Step::Done);
    }

    #[test]
    fn a_multiple_of_the_block_size_ends_with_an_empty_block() {
        let now = Instant::now();
        assert_eq!(block_count(1024, 512), 3);
        assert_eq!(block_count(0, 512), 1);
        let (mut t, _) = Transfer::start(&neg(512, 1, false), 1024, now);
        t.on_ack(1, now);
        assert_eq!(t.on_ack(2, now), Step::Blocks(3..=3));
        assert_eq!(t.byte_range(3, 1024), (1024, 0));
        assert_eq!(t.on_ack(3, now), Step::Done);
    }

    #[test]
    fn oack_first_then_ack_zero_starts_data() {
        let now = Instant::now();
        let (mut t, step) = Transfer::start(&neg(1468, 4, true), 10_000, now);
        assert_eq!(step, Step::Oack);
        assert!(t.is_awaiting_oack());
        assert_eq!(t.on_ack(1, now), Step::Wait);
        assert_eq!(t.on_ack(0, now), Step::Blocks(1..=4));
        // 10_000 / 1468 = 6 full blocks + a short 7th.
        assert_eq!(t.on_ack(4, now), Step::Blocks(5..=7));
        assert_eq!(t.byte_range(7, 10_000), (6 * 1468, 10_000 - 6 * 1468));
        assert_eq!(t.on_ack(7, now), Step::Done);
    }

    #[test]
    fn ack_inside_the_window_restarts_from_there() {
        let now = Instant::now();
        let (mut t, _) = Transfer::start(&neg(512, 8, false), 100 * 512, now);
        assert_eq!(t.on_ack(3, now), Step::Blocks(4..=11));
        assert_eq!(t.on_ack(12, now), Step::Wait, "beyond what was sent");
        assert_eq!(t.on_ack(2, now), Step::Wait, "stale");
        assert_eq!(t.on_ack(11, now), Step::Blocks(12..=19));
    }

    #[test]
    fn block_numbers_roll_over_past_65535() {
        let now = Instant::now();
        let size = 40 * 1024 * 1024; // > 32 MiB at 512-byte blocks
        let (mut t, _) = Transfer::start(&neg(512, 1, false), size, now);
        let last = block_count(size, 512);
        assert!(last > 65_536);
        for n in 1..last {
            let step = t.on_ack(wire_block(n), now);
            assert_eq!(step, Step::Blocks(n + 1..=n + 1), "after ack {n}");
        }
        assert_eq!(wire_block(65_535), 65_535);
        assert_eq!(wire_block(65_536), 0);
        assert_eq!(wire_block(65_537), 1);
        assert_eq!(t.on_ack(wire_block(last), now), Step::Done);
        // A windowed transfer across the wrap.
        let (mut t, _) = Transfer::start(&neg(512, 16, false), size, now);
        let mut acked = 0u64;
        while acked + 16 < 65_545 {
            acked += 16;
            t.on_ack(wire_block(acked), now);
        }
        assert_eq!(acked, 65_536, "blocks 65537..=65552 in flight, wire 1..=16");
        // An ACK for wire block 3 here means absolute 65_539.
        assert_eq!(
            t.on_ack(3, now),
            Step::Blocks(65_540..=65_555),
            "wire 3 is block 65539"
        );
    }

    #[test]
    fn timeouts_resend_with_backoff_then_give_up() {
        let t0 = Instant::now();
        let (mut t, _) = Transfer::start(&neg(512, 4, false), 10 * 512, t0);
        assert_eq!(t.on_ack(2, t0), Step::Blocks(3..=6));
        assert_eq!(t.on_timeout(t0), Step::Wait, "not yet due");
        let mut now = t.deadline();
        let mut gaps = Vec::new();
        for _ in 0..MAX_RETRIES {
            assert_eq!(t.on_timeout(now), Step::Blocks(3..=6));
            gaps.push(t.deadline() - now);
            now = t.deadline();
        }
        assert_eq!(
            gaps,
            [2, 4, 8, 8, 8].map(Duration::from_secs).to_vec(),
            "doubling, capped"
        );
        assert_eq!(t.on_timeout(now), Step::TimedOut);
    }

    #[test]
    fn progress_resets_the_backoff_and_oack_is_resent() {
        let t0 = Instant::now();
        let (mut t, _) = Transfer::start(&neg(512, 1, true), 2000, t0);
        let d = t.deadline();
        assert_eq!(t.on_timeout(d), Step::Oack);
        assert_eq!(t.on_ack(0, d), Step::Blocks(1..=1));
        assert_eq!(t.deadline() - d, Duration::from_secs(1));
    }
}
