//! Batched UDP I/O on Linux: up to `N` datagrams per `recvmmsg` and their replies in one
//! `sendmmsg`, so a busy server makes two system calls per batch instead of two per query.
//! The buffers live in one boxed `Batch`; the kernel structures pointing into them are
//! rebuilt right before each call, so the batch can move freely between calls.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::os::fd::RawFd;

/// Datagrams per system call.
pub const N: usize = 32;
/// Receive buffer per datagram: larger queries are cut (MSG_TRUNC) and dropped as malformed.
pub const BUF: usize = 4096;

pub struct Batch {
    bufs: Vec<[u8; BUF]>,
    addrs: Vec<libc::sockaddr_storage>,
    addr_lens: Vec<libc::socklen_t>,
    iov: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    /// Per received datagram: its length, and whether the kernel cut it.
    lens: Vec<(usize, bool)>,
    /// Replies, by slot; `pending` lists the slots to send.
    outs: Vec<Vec<u8>>,
    pending: Vec<usize>,
}

// SAFETY: the raw pointers inside `iov` and `hdrs` point only into this batch's own heap
// buffers, are rewritten before every system call and never dereferenced by Rust code; the
// batch is used by one task at a time.
unsafe impl Send for Batch {}

impl Batch {
    pub fn new() -> Box<Batch> {
        // SAFETY: all-zero is a valid value for these plain C structs.
        let (storage, iov, hdr) = unsafe {
            (
                zeroed::<libc::sockaddr_storage>(),
                zeroed::<libc::iovec>(),
                zeroed::<libc::mmsghdr>(),
            )
        };
        Box::new(Batch {
            bufs: vec![[0u8; BUF]; N],
            addrs: vec![storage; N],
            addr_lens: vec![0; N],
            iov: vec![iov; N],
            hdrs: vec![hdr; N],
            lens: vec![(0, false); N],
            outs: (0..N).map(|_| Vec::with_capacity(512)).collect(),
            pending: Vec::with_capacity(N),
        })
    }

    /// Receives up to `N` datagrams; returns how many. With `MSG_WAITFORONE` on a blocking
    /// socket it waits for the first (up to the socket's receive timeout) and takes what
    /// else is queued; with `MSG_DONTWAIT` it never waits (WouldBlock when there is none).
    pub fn recv(&mut self, fd: RawFd, flags: libc::c_int) -> io::Result<usize> {
        for i in 0..N {
            self.iov[i] = libc::iovec {
                iov_base: self.bufs[i].as_mut_ptr().cast(),
                iov_len: BUF,
            };
            // SAFETY: zeroed msghdr is valid; the pointers set below outlive the call.
            let mut h: libc::mmsghdr = unsafe { zeroed() };
            h.msg_hdr.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_hdr.msg_iov = &mut self.iov[i];
            h.msg_hdr.msg_iovlen = 1;
            self.hdrs[i] = h;
        }
        // SAFETY: `hdrs` holds N initialised headers whose buffers are owned by `self`.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                N as libc::c_uint,
                flags,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        for i in 0..n {
            let h = &self.hdrs[i];
            self.lens[i] = (
                (h.msg_len as usize).min(BUF),
                h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
            );
            self.addr_lens[i] = h.msg_hdr.msg_namelen;
        }
        self.pending.clear();
        Ok(n)
    }

    /// Datagram `i` of the last `recv` with its sender (`None` if it was cut or the sender
    /// is not IP), and slot `i`'s reply buffer.
    pub fn slot(&mut self, i: usize) -> (Option<(&[u8], SocketAddr)>, &mut Vec<u8>) {
        let (len, cut) = self.lens[i];
        let packet = match cut {
            true => None,
            false => to_socket_addr(&self.addrs[i]).map(|a| (&self.bufs[i][..len], a)),
        };
        (packet, &mut self.outs[i])
    }

    /// Marks slot `i`'s reply to be sent to its sender.
    pub fn mark(&mut self, i: usize) {
        if !self.outs[i].is_empty() {
            self.pending.push(i);
        }
    }

    /// Sends the marked replies; returns the slots that could not be sent now (the socket
    /// buffer is full: the caller waits and sends them one by one).
    pub fn send(&mut self, fd: RawFd) -> Vec<(Vec<u8>, SocketAddr)> {
        let mut start = 0;
        while start < self.pending.len() {
            let count = self.pending.len() - start;
            for (k, &slot) in self.pending[start..].iter().enumerate() {
                self.iov[k] = libc::iovec {
                    iov_base: self.outs[slot].as_mut_ptr().cast(),
                    iov_len: self.outs[slot].len(),
                };
                // SAFETY: as in `recv`.
                let mut h: libc::mmsghdr = unsafe { zeroed() };
                h.msg_hdr.msg_name = (&mut self.addrs[slot] as *mut libc::sockaddr_storage).cast();
                h.msg_hdr.msg_namelen = self.addr_lens[slot];
                h.msg_hdr.msg_iov = &mut self.iov[k];
                h.msg_hdr.msg_iovlen = 1;
                self.hdrs[k] = h;
            }
            // SAFETY: `count` initialised headers pointing at buffers owned by `self`.
            let n = unsafe {
                libc::sendmmsg(
                    fd,
                    self.hdrs.as_mut_ptr(),
                    count as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if n > 0 {
                start += n as usize;
                continue;
            }
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::WouldBlock {
                return self.pending[start..]
                    .iter()
                    .filter_map(|&s| Some((self.outs[s].clone(), to_socket_addr(&self.addrs[s])?)))
                    .collect();
            }
            // This datagram cannot be sent (e.g. an unroutable sender): skip it.
            tracing::debug!(error = %err, "DNS UDP send failed");
            start += 1;
        }
        Vec::new()
    }
}

fn to_socket_addr(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(s.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says this storage holds a sockaddr_in.
            let a = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)).into(),
                u16::from_be(a.sin_port),
            ))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this storage holds a sockaddr_in6.
            let a = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}
