//! Batched I/O on a transfer's connected socket. A window of DATA blocks goes out in one
//! `sendmmsg`, each datagram two iovecs (its 4-byte header, its slice of the window's file
//! bytes), so a window costs one system call and no copying into per-packet buffers. ACKs
//! come in with one `recvmmsg` per wakeup: a short batch proves the queue empty, which
//! saves the extra `recv` that would only return `EAGAIN`.

use std::io;
use std::mem::zeroed;
use std::os::fd::RawFd;

use super::options::MAX_WINDOW;

const N: usize = MAX_WINDOW as usize;

/// Sends datagrams `headers[i] ++ data[i * blksize ..][..blksize]` (the last may be
/// shorter or empty) for `i` in `from..headers.len()`, as many as the socket takes now.
/// Returns how many were sent in total (starting at `from`); `WouldBlock` when none.
pub fn send_window(
    fd: RawFd,
    headers: &[[u8; 4]],
    data: &[u8],
    blksize: usize,
    from: usize,
) -> io::Result<usize> {
    let count = headers.len().saturating_sub(from).min(N);
    if count == 0 {
        return Ok(0);
    }
    // SAFETY: all-zero is a valid value of these plain C structs.
    let mut iov: [[libc::iovec; 2]; N] = unsafe { zeroed() };
    let mut hdrs: [libc::mmsghdr; N] = unsafe { zeroed() };
    for k in 0..count {
        let i = from + k;
        let start = (i * blksize).min(data.len());
        let end = (start + blksize).min(data.len());
        iov[k] = [
            libc::iovec {
                iov_base: headers[i].as_ptr().cast_mut().cast(),
                iov_len: 4,
            },
            libc::iovec {
                iov_base: data[start..end].as_ptr().cast_mut().cast(),
                iov_len: end - start,
            },
        ];
        // Connected socket: no destination address.
        hdrs[k].msg_hdr.msg_iov = iov[k].as_mut_ptr();
        hdrs[k].msg_hdr.msg_iovlen = 2;
    }
    // SAFETY: `count` headers pointing at the local iovec arrays and at `headers`/`data`,
    // all alive for the call; the kernel only reads the buffers.
    let n = unsafe {
        libc::sendmmsg(
            fd,
            hdrs.as_mut_ptr(),
            count as libc::c_uint,
            libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Datagrams taken per `recvmmsg`.
pub const RECV_BATCH: usize = 8;
/// Receive buffer per datagram: ACKs are 4 bytes and errors short; longer ones are cut.
pub const RECV_BUF: usize = 1024;

/// Takes up to [`RECV_BATCH`] queued datagrams without waiting; returns how many, with
/// each one's length in `lens` (`WouldBlock` when none is queued).
pub fn recv_batch(
    fd: RawFd,
    bufs: &mut [[u8; RECV_BUF]; RECV_BATCH],
    lens: &mut [usize; RECV_BATCH],
) -> io::Result<usize> {
    // SAFETY: all-zero is a valid value of these plain C structs.
    let mut iov: [libc::iovec; RECV_BATCH] = unsafe { zeroed() };
    let mut hdrs: [libc::mmsghdr; RECV_BATCH] = unsafe { zeroed() };
    for (k, buf) in bufs.iter_mut().enumerate() {
        iov[k] = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: RECV_BUF,
        };
        hdrs[k].msg_hdr.msg_iov = &raw mut iov[k];
        hdrs[k].msg_hdr.msg_iovlen = 1;
    }
    // SAFETY: RECV_BATCH headers pointing at the local iovecs and at `bufs`, all alive
    // for the call; the kernel writes at most RECV_BUF bytes into each buffer.
    let n = unsafe {
        libc::recvmmsg(
            fd,
            hdrs.as_mut_ptr(),
            RECV_BATCH as libc::c_uint,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    for k in 0..n as usize {
        lens[k] = (hdrs[k].msg_len as usize).min(RECV_BUF);
    }
    Ok(n as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;

    #[test]
    fn sends_each_block_with_its_header() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.connect(rx.local_addr().unwrap()).unwrap();
        let data: Vec<u8> = (0..10u8).collect();
        let headers = [[0, 3, 0, 1], [0, 3, 0, 2], [0, 3, 0, 3]];
        let n = send_window(tx.as_raw_fd(), &headers, &data, 4, 0).unwrap();
        assert_eq!(n, 3);
        let mut buf = [0u8; 64];
        let want: [&[u8]; 3] = [
            &[0, 3, 0, 1, 0, 1, 2, 3],
            &[0, 3, 0, 2, 4, 5, 6, 7],
            &[0, 3, 0, 3, 8, 9],
        ];
        for w in want {
            let len = rx.recv(&mut buf).unwrap();
            assert_eq!(&buf[..len], w);
        }
        // Resuming part-way, and an empty last block.
        let n = send_window(tx.as_raw_fd(), &headers[..3], &data[..8], 4, 2).unwrap();
        assert_eq!(n, 1);
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], &[0, 3, 0, 3]);
    }

    #[test]
    fn receives_what_is_queued_then_would_block() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.connect(tx.local_addr().unwrap()).unwrap();
        let mut bufs = [[0u8; RECV_BUF]; RECV_BATCH];
        let mut lens = [0usize; RECV_BATCH];
        let e = recv_batch(rx.as_raw_fd(), &mut bufs, &mut lens).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        for i in 0..3u8 {
            tx.send_to(&[0, 4, 0, i], rx.local_addr().unwrap()).unwrap();
        }
        tx.send_to(&[7u8; 2000], rx.local_addr().unwrap()).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let n = recv_batch(rx.as_raw_fd(), &mut bufs, &mut lens).unwrap();
        assert_eq!(n, 4);
        assert_eq!(&bufs[2][..lens[2]], &[0, 4, 0, 2]);
        assert_eq!(lens[3], RECV_BUF, "cut to the buffer");
    }
}
