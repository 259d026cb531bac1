//! The lease journal: an append-only file of lease changes, one framed record per group
//! commit, made durable with one `write` + `fdatasync`.
//!
//! File `leases.<gen>.journal` (gen in decimal) starts with a header
//! `MAGIC (8) | gen (u64 LE) | crc32 of the previous 16 bytes (u32 LE)`, followed by frames
//! `len (u32 LE) | crc32(payload) (u32 LE) | payload`. A payload is a sequence of ops:
//!
//! - put:    `1 | mac_len (u16) | mac | ip (4, network order) | state (u8) | granted_at (u64)
//!   | expires_at (u64) | hostname_len + 1 (u16, 0 = none) | hostname`
//! - delete: `2 | mac_len (u16) | mac`
//!
//! (integers little-endian). A frame is the unit of atomicity: replay stops at the first frame
//! that is short, has a bad checksum or does not decode; that is the torn tail of a write
//! whose caller was never told it committed (a later frame is only written after the earlier
//! one was fsynced).
//!
//! A new journal is written to `*.tmp`, fsynced, renamed into place and the directory
//! fsynced, so a journal file that exists always has a valid header.
//!
//! The file is zero-filled ahead of the frames ([`PREALLOC`] at creation, then in steps of
//! `GROW`, written and synced once per step), so a frame is an overwrite of allocated blocks and its `fdatasync` only
//! flushes data, without a file-system journal commit for the size change. Replay ends at the
//! first zero frame header; zeros after it are that preallocation, anything else a torn tail.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::net::Ipv4Addr;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::{Lease, LeaseState, StoreError};

const MAGIC: &[u8; 8] = b"SLWLJNL1";
pub(super) const HEADER_LEN: u64 = 20;
const FRAME_HEADER: usize = 8;
/// Zeros written when a journal is created (see the module docs).
pub(super) const PREALLOC: u64 = 1 << 20;
/// Zeros added when the frames reach the end: small, so the commit that pays for it is not
/// held up for long (a MiB of zeros and its sync took up to ~25 ms here).
const GROW: u64 = 64 << 10;
/// Frames larger than this are treated as garbage on replay (a batch of 65536 leases with
/// 255-byte host names stays well below it).
const MAX_FRAME: usize = 64 << 20;

const TAG_PUT: u8 = 1;
const TAG_DELETE: u8 = 2;

/// One lease change as recorded in the journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Change {
    Put(Lease),
    Delete(String),
}

pub(super) fn file_name(generation: u64) -> String {
    format!("leases.{generation}.journal")
}

/// The generation of a journal file name, `None` for any other name.
pub(super) fn parse_name(name: &str) -> Option<u64> {
    let g = name.strip_prefix("leases.")?.strip_suffix(".journal")?;
    if g.is_empty() || !g.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    g.parse().ok()
}

/// An open journal, positioned at its end.
#[derive(Debug)]
pub(super) struct Journal {
    file: File,
    pub(super) generation: u64,
    /// Bytes known durable (header + complete frames): where the next frame goes.
    pub(super) len: u64,
    /// File size: zeros from `len` to here.
    allocated: u64,
}

impl Journal {
    /// Creates journal `generation` in `dir` atomically (tmp file, fsync, rename, dir fsync).
    /// An existing file of that generation is replaced.
    pub(super) fn create(dir: &Path, generation: u64) -> Result<Journal, StoreError> {
        let path = dir.join(file_name(generation));
        let tmp = dir.join(format!("{}.tmp", file_name(generation)));
        let mut header = Vec::with_capacity(HEADER_LEN as usize);
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&generation.to_le_bytes());
        let crc = crc32(&header);
        header.extend_from_slice(&crc.to_le_bytes());
        {
            let f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(|e| io_context(e, "creating", &tmp))?;
            f.write_all_at(&header, 0)
                .and_then(|()| zero_fill(&f, HEADER_LEN, PREALLOC))
                .and_then(|()| f.sync_all())
                .map_err(|e| io_context(e, "writing", &tmp))?;
        }
        std::fs::rename(&tmp, &path).map_err(|e| io_context(e, "renaming", &tmp))?;
        sync_dir(dir)?;
        let file = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| io_context(e, "opening", &path))?;
        Ok(Journal {
            file,
            generation,
            len: HEADER_LEN,
            allocated: PREALLOC,
        })
    }

    /// Appends one frame and makes it durable. `frame` is what [`begin_frame`] started plus
    /// the encoded changes; its first 8 bytes are filled in here. On error the file is cut
    /// back to its last durable length (so a half-written frame can never be followed by a
    /// good one); if even that fails the caller must stop appending.
    pub(super) fn append(&mut self, frame: &mut [u8]) -> Result<(), AppendError> {
        let payload_len = frame.len() - FRAME_HEADER;
        let len = u32::try_from(payload_len).map_err(|_| {
            AppendError::Clean(StoreError::Corrupt(format!(
                "lease journal frame of {payload_len} bytes is too large"
            )))
        })?;
        let crc = crc32(&frame[FRAME_HEADER..]);
        frame[..4].copy_from_slice(&len.to_le_bytes());
        frame[4..FRAME_HEADER].copy_from_slice(&crc.to_le_bytes());
        let end = self.len + frame.len() as u64;
        if end > self.allocated {
            // Zeros first, synced with the size change; once per GROW bytes.
            let to = end.div_ceil(GROW) * GROW + GROW;
            zero_fill(&self.file, self.allocated, to)
                .and_then(|()| self.file.sync_all())
                .map_err(|e| AppendError::Clean(StoreError::Io(e)))?;
            self.allocated = to;
        }
        match self
            .file
            .write_all_at(frame, self.len)
            .and_then(|()| self.file.sync_data())
        {
            Ok(()) => {
                self.len = end;
                Ok(())
            }
            Err(e) => {
                // Put the zeros back so the frame cannot surface on replay.
                let cut = zero_fill(&self.file, self.len, end).and_then(|()| self.file.sync_data());
                match cut {
                    Ok(()) => Err(AppendError::Clean(StoreError::Io(e))),
                    Err(cut) => Err(AppendError::Poisoned(format!(
                        "lease journal write failed ({e}) and could not be rolled back ({cut})"
                    ))),
                }
            }
        }
    }
}

/// Writes zeros over `from..to`.
fn zero_fill(f: &File, from: u64, to: u64) -> std::io::Result<()> {
    static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
    let mut at = from;
    while at < to {
        let n = (to - at).min(ZEROS.len() as u64);
        f.write_all_at(&ZEROS[..n as usize], at)?;
        at += n;
    }
    Ok(())
}

#[derive(Debug)]
pub(super) enum AppendError {
    /// Nothing of the frame is in the file.
    Clean(StoreError),
    /// The file's tail is in an unknown state: no further appends.
    Poisoned(String),
}

/// Starts a frame in `buf`: room for the frame header, changes are encoded after it.
pub(super) fn begin_frame(buf: &mut Vec<u8>) {
    buf.clear();
    buf.extend_from_slice(&[0; FRAME_HEADER]);
}

/// Whether `buf` (started with [`begin_frame`]) holds any change.
pub(super) fn frame_is_empty(buf: &[u8]) -> bool {
    buf.len() <= FRAME_HEADER
}

/// What replaying one journal found.
#[derive(Debug)]
pub(super) struct Replay {
    pub(super) frames: usize,
    /// Bytes after the last good frame that are not preallocated zeros (a torn tail),
    /// ignored.
    pub(super) ignored: u64,
}

/// Reads journal `path`, calling `apply` for every change of every complete frame in order.
pub(super) fn replay(
    path: &Path,
    expected_generation: u64,
    mut apply: impl FnMut(Change) -> Result<(), StoreError>,
) -> Result<Replay, StoreError> {
    let mut data = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut data))
        .map_err(|e| io_context(e, "reading", path))?;
    let corrupt = |what: &str| StoreError::Corrupt(format!("{}: {what}", path.display()));
    if data.len() < HEADER_LEN as usize || &data[..8] != MAGIC {
        return Err(corrupt("not a lease journal (bad header)"));
    }
    let crc = u32::from_le_bytes(data[16..20].try_into().expect("4 bytes"));
    if crc != crc32(&data[..16]) {
        return Err(corrupt("header checksum mismatch"));
    }
    let generation = u64::from_le_bytes(data[8..16].try_into().expect("8 bytes"));
    if generation != expected_generation {
        return Err(corrupt(&format!(
            "header says generation {generation}, name says {expected_generation}"
        )));
    }
    let mut at = HEADER_LEN as usize;
    let mut frames = 0;
    while let Some(payload) = next_frame(&data, at) {
        let changes = decode_payload(payload).ok_or_else(|| {
            corrupt(&format!(
                "frame at byte {at} passed its checksum but does not decode"
            ))
        })?;
        for c in changes {
            apply(c)?;
        }
        at += FRAME_HEADER + payload.len();
        frames += 1;
    }
    let rest = &data[at..];
    let ignored = match rest.iter().rposition(|&b| b != 0) {
        Some(last) => last as u64 + 1,
        None => 0,
    };
    Ok(Replay { frames, ignored })
}

/// The payload of the complete, checksummed frame at `at`, if there is one.
fn next_frame(data: &[u8], at: usize) -> Option<&[u8]> {
    let header = data.get(at..at + FRAME_HEADER)?;
    let len = u32::from_le_bytes(header[..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(header[4..].try_into().ok()?);
    if len == 0 || len > MAX_FRAME {
        return None;
    }
    let payload = data.get(at + FRAME_HEADER..at + FRAME_HEADER + len)?;
    (crc32(payload) == crc).then_some(payload)
}

/// Appends the encoding of a put of `l` to `out`. Fails (writing nothing) on a MAC or host
/// name longer than 65534 bytes.
pub(super) fn encode_put(l: &Lease, out: &mut Vec<u8>) -> Result<(), StoreError> {
    let mac_len = u16::try_from(l.mac.len()).map_err(|_| too_long("MAC"))?;
    let host_len = match &l.hostname {
        None => 0,
        Some(h) => u16::try_from(h.len())
            .ok()
            .and_then(|n| n.checked_add(1))
            .ok_or_else(|| too_long("host name"))?,
    };
    out.push(TAG_PUT);
    out.extend_from_slice(&mac_len.to_le_bytes());
    out.extend_from_slice(l.mac.as_bytes());
    out.extend_from_slice(&l.ip.octets());
    out.push(state_code(l.state));
    out.extend_from_slice(&l.granted_at.to_le_bytes());
    out.extend_from_slice(&l.expires_at.to_le_bytes());
    out.extend_from_slice(&host_len.to_le_bytes());
    if let Some(h) = &l.hostname {
        out.extend_from_slice(h.as_bytes());
    }
    Ok(())
}

/// Appends the encoding of a delete of `mac` to `out`.
pub(super) fn encode_delete(mac: &str, out: &mut Vec<u8>) -> Result<(), StoreError> {
    let mac_len = u16::try_from(mac.len()).map_err(|_| too_long("MAC"))?;
    out.push(TAG_DELETE);
    out.extend_from_slice(&mac_len.to_le_bytes());
    out.extend_from_slice(mac.as_bytes());
    Ok(())
}

fn too_long(what: &str) -> StoreError {
    StoreError::Corrupt(format!("lease {what} is too long to store"))
}

fn decode_payload(mut p: &[u8]) -> Option<Vec<Change>> {
    let mut out = Vec::new();
    while !p.is_empty() {
        let tag = take(&mut p, 1)?[0];
        let mac_len = usize::from(u16::from_le_bytes(take(&mut p, 2)?.try_into().ok()?));
        let mac = std::str::from_utf8(take(&mut p, mac_len)?)
            .ok()?
            .to_string();
        match tag {
            TAG_PUT => {
                let ip: [u8; 4] = take(&mut p, 4)?.try_into().ok()?;
                let state = state_from(take(&mut p, 1)?[0])?;
                let granted_at = u64::from_le_bytes(take(&mut p, 8)?.try_into().ok()?);
                let expires_at = u64::from_le_bytes(take(&mut p, 8)?.try_into().ok()?);
                let host_len = u16::from_le_bytes(take(&mut p, 2)?.try_into().ok()?);
                let hostname = match host_len {
                    0 => None,
                    n => Some(
                        std::str::from_utf8(take(&mut p, usize::from(n - 1))?)
                            .ok()?
                            .to_string(),
                    ),
                };
                out.push(Change::Put(Lease {
                    mac,
                    ip: Ipv4Addr::from(ip),
                    state,
                    hostname,
                    granted_at,
                    expires_at,
                }));
            }
            TAG_DELETE => out.push(Change::Delete(mac)),
            _ => return None,
        }
    }
    Some(out)
}

fn take<'a>(p: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if p.len() < n {
        return None;
    }
    let (head, tail) = p.split_at(n);
    *p = tail;
    Some(head)
}

fn state_code(s: LeaseState) -> u8 {
    match s {
        LeaseState::Offered => 0,
        LeaseState::Bound => 1,
        LeaseState::Released => 2,
        LeaseState::Declined => 3,
    }
}

fn state_from(b: u8) -> Option<LeaseState> {
    Some(match b {
        0 => LeaseState::Offered,
        1 => LeaseState::Bound,
        2 => LeaseState::Released,
        3 => LeaseState::Declined,
        _ => return None,
    })
}

pub(super) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_context(e, "syncing directory", dir))
}

fn io_context(e: std::io::Error, what: &str, path: &Path) -> StoreError {
    StoreError::Io(std::io::Error::new(
        e.kind(),
        format!("{what} {}: {e}", path.display()),
    ))
}

/// Journal files in `dir` as (generation, path), oldest first; leftover `*.tmp` files of an
/// interrupted rotation are removed.
pub(super) fn list(dir: &Path) -> Result<Vec<(u64, PathBuf)>, StoreError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| io_context(e, "listing", dir))? {
        let entry = entry.map_err(|e| io_context(e, "listing", dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(generation) = parse_name(name) {
            out.push((generation, entry.path()));
        } else if name.starts_with("leases.") && name.ends_with(".journal.tmp") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    out.sort();
    Ok(out)
}

/// CRC-32 (IEEE 802.3, reflected, as zlib computes it).
pub(super) fn crc32(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut t = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            t[i] = c;
            i += 1;
        }
        t
    };
    let mut c = !0u32;
    for &b in data {
        c = TABLE[((c ^ u32::from(b)) & 0xFF) as usize] ^ (c >> 8);
    }
    !c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn changes_round_trip() {
        let put = Change::Put(Lease {
            mac: "52:54:00:00:00:01".into(),
            ip: Ipv4Addr::new(10, 1, 2, 3),
            state: LeaseState::Released,
            hostname: Some("node-1".into()),
            granted_at: 7,
            expires_at: u64::MAX,
        });
        let no_host = Change::Put(Lease {
            mac: "declined:10.1.2.4".into(),
            ip: Ipv4Addr::new(10, 1, 2, 4),
            state: LeaseState::Declined,
            hostname: None,
            granted_at: 0,
            expires_at: 1,
        });
        let del = Change::Delete("52:54:00:00:00:02".into());
        let mut buf = Vec::new();
        for c in [&put, &no_host, &del] {
            match c {
                Change::Put(l) => encode_put(l, &mut buf).unwrap(),
                Change::Delete(m) => encode_delete(m, &mut buf).unwrap(),
            }
        }
        assert_eq!(decode_payload(&buf).unwrap(), vec![put, no_host, del]);
        assert!(decode_payload(&buf[..buf.len() - 1]).is_none());
    }

    #[test]
    fn names_parse() {
        assert_eq!(parse_name(&file_name(42)), Some(42));
        assert_eq!(parse_name("leases.x.journal"), None);
        assert_eq!(parse_name("leases.1.journal.tmp"), None);
    }
}
