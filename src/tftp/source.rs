//! Where a transfer's bytes come from: the opened file, read with pread a window or more
//! at a time (no shared file offset), or, for the rare netascii
//! request, the file converted once in memory (the conversion changes the length, so
//! blocks no longer map to file offsets).

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;

/// Largest file served in netascii mode (converted in memory; boot files are octet).
pub const MAX_NETASCII: u64 = 16 << 20;

#[derive(Debug)]
pub enum Source {
    File { file: File, size: u64 },
    Memory(Vec<u8>),
}

impl Source {
    /// A netascii source from `file`, or `None` when it is too large to convert.
    pub fn netascii(mut file: File, size: u64) -> io::Result<Option<Source>> {
        if size > MAX_NETASCII {
            return Ok(None);
        }
        let mut raw = Vec::with_capacity(size as usize);
        file.read_to_end(&mut raw)?;
        Ok(Some(Source::Memory(to_netascii(&raw))))
    }

    /// Bytes on the wire.
    pub fn size(&self) -> u64 {
        match self {
            Source::File { size, .. } => *size,
            Source::Memory(m) => m.len() as u64,
        }
    }

    /// `len` bytes at `offset`: borrowed from memory, or from `ahead`, which is refilled
    /// with one pread of at least [`READ_AHEAD`] bytes when it does not hold them (a
    /// lock-step transfer then reads the file once per ~90 blocks, not once per block).
    /// A file that shrank since it was opened fails with `UnexpectedEof`.
    pub fn read<'a>(
        &'a self,
        offset: u64,
        len: usize,
        ahead: &'a mut ReadAhead,
    ) -> io::Result<&'a [u8]> {
        match self {
            Source::File { file, size } => {
                let held = ahead.at..ahead.at + ahead.data.len() as u64;
                if !(held.contains(&offset) && offset + len as u64 <= held.end) {
                    let want = (len.max(READ_AHEAD) as u64).min(size.saturating_sub(offset));
                    let want = (want as usize).max(len);
                    ahead.data.resize(want, 0);
                    ahead.at = offset;
                    if let Err(e) = file.read_exact_at(&mut ahead.data, offset) {
                        ahead.data.clear();
                        return Err(e);
                    }
                }
                let from = (offset - ahead.at) as usize;
                Ok(&ahead.data[from..from + len])
            }
            Source::Memory(m) => {
                let start = usize::try_from(offset).unwrap_or(usize::MAX).min(m.len());
                let end = start.saturating_add(len).min(m.len());
                Ok(&m[start..end])
            }
        }
    }
}

/// Bytes read past the current window, so the next windows need no system call.
pub const READ_AHEAD: usize = 128 * 1024;

/// A transfer's read buffer: `data` holds the file's bytes from offset `at`.
#[derive(Debug, Default)]
pub struct ReadAhead {
    data: Vec<u8>,
    at: u64,
}

/// RFC 764 NVT ASCII: LF becomes CR LF, a bare CR becomes CR NUL.
pub fn to_netascii(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 16);
    for &b in raw {
        match b {
            b'\n' => out.extend_from_slice(b"\r\n"),
            b'\r' => out.extend_from_slice(b"\r\0"),
            b => out.push(b),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netascii_conversion() {
        assert_eq!(to_netascii(b"a\nb\rc\r\n"), b"a\r\nb\r\0c\r\0\r\n");
        assert_eq!(to_netascii(b""), b"");
    }

    #[test]
    fn reads_windows_from_files_and_memory() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"0123456789").unwrap();
        let src = Source::File {
            file: File::open(&p).unwrap(),
            size: 10,
        };
        let mut buf = ReadAhead::default();
        assert_eq!(src.read(4, 3, &mut buf).unwrap(), b"456");
        assert_eq!(buf.data, b"456789", "read ahead to the end");
        std::fs::write(&p, b"abcdefghij").unwrap();
        assert_eq!(
            src.read(7, 2, &mut buf).unwrap(),
            b"78",
            "served from the buffer"
        );
        assert_eq!(
            src.read(1, 2, &mut buf).unwrap(),
            b"bc",
            "before the buffer: reread"
        );
        assert_eq!(src.read(10, 0, &mut buf).unwrap(), b"");
        assert_eq!(
            src.read(8, 5, &mut buf).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
        assert!(buf.data.is_empty());
        let m = Source::netascii(File::open(&p).unwrap(), 10)
            .unwrap()
            .unwrap();
        assert_eq!(m.size(), 10);
        assert_eq!(m.read(8, 5, &mut buf).unwrap(), b"ij");
        assert_eq!(m.read(u64::MAX, 5, &mut buf).unwrap(), b"");
    }
}
