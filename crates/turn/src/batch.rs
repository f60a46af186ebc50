//! Batched UDP I/O for the relay hot path: `recvmmsg`/`sendmmsg` on Linux (one system call for up to
//! [`BATCH`] datagrams), a one-datagram-per-call fallback elsewhere. All buffers are allocated once,
//! when a batch object is created; nothing is allocated per datagram.

use std::io;
use std::net::SocketAddr;
#[cfg(target_os = "linux")]
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;

/// Most datagrams per system call.
pub(crate) const BATCH: usize = 32;
/// Receive slot: the largest UDP payload. The pages of unused slots are never touched, so they cost
/// address space, not memory.
pub(crate) const SLOT: usize = 65536;

#[cfg(target_os = "linux")]
fn to_sockaddr(addr: &SocketAddr, out: &mut libc::sockaddr_storage) -> libc::socklen_t {
    match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in.
            let sin =
                unsafe { &mut *(out as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr = libc::in_addr {
                s_addr: u32::from(*a.ip()).to_be(),
            };
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in6.
            let sin6 =
                unsafe { &mut *(out as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_flowinfo = a.flowinfo();
            sin6.sin6_addr = libc::in6_addr {
                s6_addr: a.ip().octets(),
            };
            sin6.sin6_scope_id = a.scope_id();
            std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

#[cfg(target_os = "linux")]
fn from_sockaddr(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(s.ss_family) {
        libc::AF_INET => {
            // SAFETY: the kernel wrote a sockaddr_in (family AF_INET).
            let sin = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the kernel wrote a sockaddr_in6 (family AF_INET6).
            let sin6 =
                unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Up to [`BATCH`] received datagrams with their source addresses.
pub(crate) struct RecvBatch {
    buf: Vec<u8>,
    lens: [usize; BATCH],
    from: [Option<SocketAddr>; BATCH],
    #[cfg(target_os = "linux")]
    sys: Sys,
}

#[cfg(target_os = "linux")]
struct Sys {
    iov: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    names: Vec<libc::sockaddr_storage>,
}

// SAFETY: the raw pointers in `Sys` are scratch, rewritten before every system call and never
// dereferenced by Rust code; moving the arrays to another thread is harmless.
#[cfg(target_os = "linux")]
unsafe impl Send for Sys {}

#[cfg(target_os = "linux")]
impl Sys {
    fn new() -> Sys {
        // SAFETY: all-zero is a valid value of these plain C structs.
        unsafe {
            Sys {
                iov: vec![std::mem::zeroed(); BATCH],
                hdrs: vec![std::mem::zeroed(); BATCH],
                names: vec![std::mem::zeroed(); BATCH],
            }
        }
    }
}

impl RecvBatch {
    pub(crate) fn new() -> RecvBatch {
        RecvBatch {
            buf: vec![0u8; BATCH * SLOT],
            lens: [0; BATCH],
            from: [None; BATCH],
            #[cfg(target_os = "linux")]
            sys: Sys::new(),
        }
    }

    /// Receive what is queued on non-blocking socket `fd`, at most [`BATCH`] datagrams; `Ok(0)` means
    /// nothing was queued.
    #[cfg(target_os = "linux")]
    pub(crate) fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        let base = self.buf.as_mut_ptr();
        for k in 0..BATCH {
            // SAFETY: slot k lies inside `buf` (BATCH * SLOT bytes).
            self.sys.iov[k].iov_base = unsafe { base.add(k * SLOT) }.cast();
            self.sys.iov[k].iov_len = SLOT;
            let h = &mut self.sys.hdrs[k];
            h.msg_len = 0;
            h.msg_hdr.msg_name = (&mut self.sys.names[k] as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as _;
            h.msg_hdr.msg_iov = &mut self.sys.iov[k];
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_control = std::ptr::null_mut();
            h.msg_hdr.msg_controllen = 0;
            h.msg_hdr.msg_flags = 0;
        }
        // SAFETY: every header points at live iovecs/names owned by `self`; no timeout.
        let r = unsafe {
            libc::recvmmsg(
                fd,
                self.sys.hdrs.as_mut_ptr(),
                BATCH as _,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock => Ok(0),
                _ => Err(e),
            };
        }
        let n = r as usize;
        for k in 0..n {
            self.lens[k] = (self.sys.hdrs[k].msg_len as usize).min(SLOT);
            self.from[k] = from_sockaddr(&self.sys.names[k]);
        }
        Ok(n)
    }

    /// Fallback: one `recvfrom` per datagram.
    #[cfg(not(target_os = "linux"))]
    pub(crate) fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        use std::os::fd::FromRawFd;
        // SAFETY: borrowed for this call only; ManuallyDrop keeps the fd open.
        let sock = std::mem::ManuallyDrop::new(unsafe { std::net::UdpSocket::from_raw_fd(fd) });
        let mut n = 0;
        while n < BATCH {
            match sock.recv_from(&mut self.buf[n * SLOT..(n + 1) * SLOT]) {
                Ok((len, from)) => {
                    self.lens[n] = len;
                    self.from[n] = Some(from);
                    n += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if n == 0 => return Err(e),
                Err(_) => break,
            }
        }
        Ok(n)
    }

    /// Datagram `k` of the last [`RecvBatch::recv`] and its source (None: unknown address family).
    pub(crate) fn get(&self, k: usize) -> (&[u8], Option<SocketAddr>) {
        (&self.buf[k * SLOT..k * SLOT + self.lens[k]], self.from[k])
    }

    /// Offset of `data` (a slice of datagram `k`) within that datagram's slot.
    pub(crate) fn offset_in(&self, k: usize, data: &[u8]) -> Option<(usize, usize)> {
        let slot = self.buf[k * SLOT..].as_ptr() as usize;
        let start = (data.as_ptr() as usize).checked_sub(slot)?;
        (start + data.len() <= self.lens[k]).then_some((start, data.len()))
    }
}

/// Datagrams to send, each from its own buffer to its own destination, in one `sendmmsg` per socket.
pub(crate) struct SendBatch {
    /// Per-datagram buffers (capacity reserved once).
    pub(crate) bufs: Vec<Vec<u8>>,
    dest: [Option<SocketAddr>; BATCH],
    len: usize,
    #[cfg(target_os = "linux")]
    sys: Sys,
}

impl SendBatch {
    pub(crate) fn new(capacity: usize) -> SendBatch {
        SendBatch {
            bufs: (0..BATCH).map(|_| Vec::with_capacity(capacity)).collect(),
            dest: [None; BATCH],
            len: 0,
            #[cfg(target_os = "linux")]
            sys: Sys::new(),
        }
    }

    /// The buffer of the next datagram (cleared), or None when the batch is full.
    pub(crate) fn next_buf(&mut self) -> Option<&mut Vec<u8>> {
        let b = self.bufs.get_mut(self.len)?;
        b.clear();
        Some(b)
    }

    /// Queue the buffer returned by [`SendBatch::next_buf`] for `to`.
    pub(crate) fn commit(&mut self, to: SocketAddr) {
        if self.len < BATCH {
            self.dest[self.len] = Some(to);
            self.len += 1;
        }
    }

    /// Number of datagrams queued.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Send every queued datagram on non-blocking socket `fd`; returns how many the kernel took (the rest
    /// are dropped, as UDP would) and empties the batch.
    pub(crate) fn flush(&mut self, fd: RawFd) -> io::Result<usize> {
        let n = self.len;
        self.len = 0;
        if n == 0 {
            return Ok(0);
        }
        send_slices(
            fd,
            n,
            |k| {
                (
                    self.bufs[k].as_slice(),
                    self.dest[k].unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0))),
                )
            },
            #[cfg(target_os = "linux")]
            &mut self.sys,
        )
    }
}

/// Scratch for [`send_slices`] (Linux: iovecs, headers, addresses).
pub(crate) struct SendScratch {
    #[cfg(target_os = "linux")]
    sys: Sys,
}

impl SendScratch {
    pub(crate) fn new() -> SendScratch {
        SendScratch {
            #[cfg(target_os = "linux")]
            sys: Sys::new(),
        }
    }

    /// Send `n` (≤ [`BATCH`]) datagrams `item(k)` on non-blocking socket `fd`; returns how many left.
    pub(crate) fn send<'a>(
        &mut self,
        fd: RawFd,
        n: usize,
        item: impl Fn(usize) -> (&'a [u8], SocketAddr),
    ) -> io::Result<usize> {
        send_slices(
            fd,
            n,
            item,
            #[cfg(target_os = "linux")]
            &mut self.sys,
        )
    }
}

#[cfg(target_os = "linux")]
fn send_slices<'a>(
    fd: RawFd,
    n: usize,
    item: impl Fn(usize) -> (&'a [u8], SocketAddr),
    sys: &mut Sys,
) -> io::Result<usize> {
    let n = n.min(BATCH);
    let mut done = 0;
    while done < n {
        let m = n - done;
        for j in 0..m {
            let (data, to) = item(done + j);
            sys.iov[j].iov_base = data.as_ptr() as *mut libc::c_void;
            sys.iov[j].iov_len = data.len();
            let namelen = to_sockaddr(&to, &mut sys.names[j]);
            let h = &mut sys.hdrs[j];
            h.msg_len = 0;
            h.msg_hdr.msg_name = (&mut sys.names[j] as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_namelen = namelen;
            h.msg_hdr.msg_iov = &mut sys.iov[j];
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_control = std::ptr::null_mut();
            h.msg_hdr.msg_controllen = 0;
            h.msg_hdr.msg_flags = 0;
        }
        // SAFETY: the first `m` headers point at live iovecs (over slices borrowed for 'a) and names.
        let r = unsafe { libc::sendmmsg(fd, sys.hdrs.as_mut_ptr(), m as _, libc::MSG_DONTWAIT) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::WouldBlock {
                return Ok(done);
            }
            if done == 0 {
                return Err(e);
            }
            return Ok(done);
        }
        if r == 0 {
            return Ok(done);
        }
        done += r as usize;
    }
    Ok(done)
}

#[cfg(not(target_os = "linux"))]
fn send_slices<'a>(
    fd: RawFd,
    n: usize,
    item: impl Fn(usize) -> (&'a [u8], SocketAddr),
) -> io::Result<usize> {
    use std::os::fd::FromRawFd;
    // SAFETY: borrowed for this call only; ManuallyDrop keeps the fd open.
    let sock = std::mem::ManuallyDrop::new(unsafe { std::net::UdpSocket::from_raw_fd(fd) });
    let mut done = 0;
    for k in 0..n.min(BATCH) {
        let (data, to) = item(k);
        match sock.send_to(data, to) {
            Ok(_) => done += 1,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if done == 0 => return Err(e),
            Err(_) => break,
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn batch_round_trip_keeps_order_sources_and_sizes() {
        let a = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind a");
        let b = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind b");
        b.set_nonblocking(true).expect("nonblocking");
        let to = b.local_addr().expect("addr");
        let mut sb = SendBatch::new(70_000);
        for k in 0..5usize {
            let buf = sb.next_buf().expect("room");
            buf.extend(std::iter::repeat_n(k as u8, 1 + k * 1000));
            sb.commit(to);
        }
        // One datagram bigger than any MTU still fits a slot.
        let buf = sb.next_buf().expect("room");
        buf.resize(60_000, 9);
        sb.commit(to);
        assert_eq!(sb.len(), 6);
        assert_eq!(sb.flush(a.as_raw_fd()).expect("send"), 6);
        assert_eq!(sb.len(), 0);
        std::thread::sleep(std::time::Duration::from_millis(50));
        let mut rb = RecvBatch::new();
        let n = rb.recv(b.as_raw_fd()).expect("recv");
        assert_eq!(n, 6);
        for k in 0..5usize {
            let (d, from) = rb.get(k);
            assert_eq!(d.len(), 1 + k * 1000);
            assert!(d.iter().all(|x| *x == k as u8));
            assert_eq!(from, Some(a.local_addr().expect("addr")));
            assert_eq!(rb.offset_in(k, &d[1..]), Some((1, d.len() - 1)));
        }
        assert_eq!(rb.get(5).0.len(), 60_000);
        assert_eq!(
            rb.recv(b.as_raw_fd()).expect("empty"),
            0,
            "nothing queued → 0"
        );
        // IPv6 addresses survive the sockaddr conversion both ways.
        if let (Ok(c), Ok(d)) = (
            std::net::UdpSocket::bind("[::1]:0"),
            std::net::UdpSocket::bind("[::1]:0"),
        ) {
            d.set_nonblocking(true).expect("nonblocking");
            let mut s = SendScratch::new();
            let to = d.local_addr().expect("addr");
            let sent = s
                .send(c.as_raw_fd(), 2, |_| (b"v6".as_slice(), to))
                .expect("send v6");
            assert_eq!(sent, 2);
            std::thread::sleep(std::time::Duration::from_millis(50));
            assert_eq!(rb.recv(d.as_raw_fd()).expect("recv v6"), 2);
            assert_eq!(
                rb.get(1),
                (b"v6".as_slice(), Some(c.local_addr().expect("addr")))
            );
        }
    }
}
