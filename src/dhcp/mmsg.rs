//! Batched UDP I/O for the DHCP server: up to [`N`] datagrams per `recvmmsg`, replies (each
//! to its own destination) in one `sendmmsg`. The kernel structures are rebuilt right before
//! each call from buffers owned by the batch, so nothing points anywhere stale.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::RawFd;

/// Datagrams per system call.
pub const N: usize = 64;
/// Receive buffer per datagram (a DHCP message fits an Ethernet frame); longer ones are cut
/// and reported as such.
pub const BUF: usize = 1500;

/// Received datagrams.
pub struct RecvBatch {
    bufs: Vec<[u8; BUF]>,
    addrs: Vec<libc::sockaddr_in>,
    iov: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    /// Per datagram: length, cut by the kernel, sender.
    got: Vec<(usize, bool, SocketAddr)>,
}

// SAFETY: the raw pointers in `iov` and `hdrs` point only into this batch's own heap
// buffers, are rewritten before every call and never dereferenced by Rust code.
unsafe impl Send for RecvBatch {}

impl RecvBatch {
    pub fn new() -> RecvBatch {
        // SAFETY: all-zero is a valid value of these plain C structs.
        let (addr, iov, hdr) = unsafe {
            (
                zeroed::<libc::sockaddr_in>(),
                zeroed::<libc::iovec>(),
                zeroed::<libc::mmsghdr>(),
            )
        };
        RecvBatch {
            bufs: vec![[0u8; BUF]; N],
            addrs: vec![addr; N],
            iov: vec![iov; N],
            hdrs: vec![hdr; N],
            got: Vec::with_capacity(N),
        }
    }

    /// Takes up to `N` queued datagrams; with `wait`, first waits for one (up to the
    /// socket's receive timeout), else fails with `WouldBlock` when none is queued. Returns
    /// how many.
    pub fn recv(&mut self, fd: RawFd, wait: bool) -> io::Result<usize> {
        for i in 0..N {
            self.iov[i] = libc::iovec {
                iov_base: self.bufs[i].as_mut_ptr().cast(),
                iov_len: BUF,
            };
            // SAFETY: a zeroed msghdr is valid; the pointers set here outlive the call.
            let mut h: libc::mmsghdr = unsafe { zeroed() };
            h.msg_hdr.msg_name = (&raw mut self.addrs[i]).cast();
            h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
            h.msg_hdr.msg_iov = &raw mut self.iov[i];
            h.msg_hdr.msg_iovlen = 1;
            self.hdrs[i] = h;
        }
        // SAFETY: `hdrs` holds N initialised headers whose buffers belong to `self`.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                N as libc::c_uint,
                if wait {
                    libc::MSG_WAITFORONE
                } else {
                    libc::MSG_DONTWAIT
                },
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        self.got.clear();
        for i in 0..n as usize {
            let h = &self.hdrs[i];
            let a = &self.addrs[i];
            let from = SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            );
            self.got.push((
                (h.msg_len as usize).min(BUF),
                h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
                from.into(),
            ));
        }
        Ok(n as usize)
    }

    /// Datagram `i` of the last `recv`: bytes, whether the kernel cut it, sender.
    pub fn get(&self, i: usize) -> (&[u8], bool, SocketAddr) {
        let (len, cut, from) = self.got[i];
        (&self.bufs[i][..len], cut, from)
    }
}

/// Replies waiting to be sent, each with its destination.
#[derive(Default)]
pub struct SendBatch {
    msgs: Vec<(Vec<u8>, SocketAddrV4)>,
    /// Spare buffers of sent messages, reused by `buffer`.
    spare: Vec<Vec<u8>>,
}

impl SendBatch {
    /// An empty buffer to encode a reply into (recycled from earlier sends).
    pub fn buffer(&mut self) -> Vec<u8> {
        let mut b = self.spare.pop().unwrap_or_else(|| Vec::with_capacity(576));
        b.clear();
        b
    }

    pub fn push(&mut self, bytes: Vec<u8>, to: SocketAddr) {
        match to {
            SocketAddr::V4(to) if !bytes.is_empty() => self.msgs.push((bytes, to)),
            _ => tracing::debug!(%to, "DHCP reply not sent: empty or not IPv4"),
        }
    }

    /// Sends everything queued, `N` per call; a datagram the kernel refuses is logged and
    /// skipped.
    pub fn flush(&mut self, fd: RawFd) {
        let mut start = 0;
        while start < self.msgs.len() {
            let count = (self.msgs.len() - start).min(N);
            // SAFETY: all-zero is a valid value of these plain C structs.
            let mut addrs: [libc::sockaddr_in; N] = unsafe { zeroed() };
            let mut iov: [libc::iovec; N] = unsafe { zeroed() };
            let mut hdrs: [libc::mmsghdr; N] = unsafe { zeroed() };
            for k in 0..count {
                let (bytes, to) = &self.msgs[start + k];
                addrs[k].sin_family = libc::AF_INET as libc::sa_family_t;
                addrs[k].sin_port = to.port().to_be();
                addrs[k].sin_addr.s_addr = u32::from(*to.ip()).to_be();
                iov[k] = libc::iovec {
                    iov_base: bytes.as_ptr().cast_mut().cast(),
                    iov_len: bytes.len(),
                };
                hdrs[k].msg_hdr.msg_name = (&raw mut addrs[k]).cast();
                hdrs[k].msg_hdr.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
                hdrs[k].msg_hdr.msg_iov = &raw mut iov[k];
                hdrs[k].msg_hdr.msg_iovlen = 1;
            }
            // SAFETY: `count` initialised headers pointing at the local arrays and at the
            // queued messages, all alive for the call; the kernel only reads the buffers.
            let n = unsafe { libc::sendmmsg(fd, hdrs.as_mut_ptr(), count as libc::c_uint, 0) };
            if n > 0 {
                start += n as usize;
                continue;
            }
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            tracing::warn!(to = %self.msgs[start].1, error = %err, "DHCP send failed");
            start += 1;
        }
        for (b, _) in self.msgs.drain(..) {
            if self.spare.len() < 2 * N {
                self.spare.push(b);
            }
        }
    }
}

/// Bytes queued in the socket's receive buffer (`SO_MEMINFO`), or `None` if the kernel does
/// not say.
#[cfg(any(
    target_arch = "x86_64",
    target_arch = "x86",
    target_arch = "aarch64",
    target_arch = "arm",
    target_arch = "riscv64"
))]
pub fn queued_bytes(fd: RawFd) -> Option<u32> {
    // SO_MEMINFO as asm-generic/socket.h defines it for these architectures; the libc crate
    // does not define it. The answer is an array of counters, receive-queue memory first.
    const SO_MEMINFO: libc::c_int = 55;
    let mut info = [0u32; 9];
    let mut len = size_of::<[u32; 9]>() as libc::socklen_t;
    // SAFETY: `info` and `len` are valid for writes of `len` bytes for the call.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_MEMINFO,
            info.as_mut_ptr().cast(),
            &raw mut len,
        )
    };
    (rc == 0 && len >= 4).then_some(info[0])
}

/// Elsewhere the option number differs and is not wired up: no socket-based shedding (the
/// write-queue depth still triggers it).
#[cfg(not(any(
    target_arch = "x86_64",
    target_arch = "x86",
    target_arch = "aarch64",
    target_arch = "arm",
    target_arch = "riscv64"
)))]
pub fn queued_bytes(_fd: RawFd) -> Option<u32> {
    None
}
