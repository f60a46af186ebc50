//! Low-level batched UDP I/O shared by the TURN relay and the SFU hot paths.
//!
//! - [`RecvBatch`]: `recvmmsg` on Linux (one system call for up to `N` datagrams of up to `SLOT` bytes
//!   each, into one reused buffer), one `recvfrom` per datagram elsewhere.
//! - [`PlainSend`]: datagrams from the caller's slices to their own destinations in `sendmmsg` calls (no
//!   GSO), one `sendto` per datagram elsewhere.
//! - [`to_sockaddr`] / [`from_sockaddr`] (Linux): `SocketAddr` ⇄ `sockaddr_storage`.
//! - [`fill_send_header`] (Linux): one `sendmmsg` header — destination, iovecs, and the `UDP_SEGMENT` control
//!   message of a GSO send — for the callers' own batches.
//!
//! All buffers are allocated once, when a batch object is created; nothing is allocated per datagram.
//! Sockets are given as raw descriptors of non-blocking (or `MSG_DONTWAIT`-read) UDP sockets that the
//! caller keeps open for the duration of each call. Which datagrams form one segmentation offload (GSO) send
//! is left to the callers (the TURN relay and the SFU group them differently); [`fill_send_header`] writes it.

use std::io;
use std::net::SocketAddr;
#[cfg(target_os = "linux")]
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Writes `addr` into `out`; returns the length of the address written (for `msg_namelen`).
#[cfg(target_os = "linux")]
pub fn to_sockaddr(addr: &SocketAddr, out: &mut libc::sockaddr_storage) -> libc::socklen_t {
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

/// Reads the address the kernel wrote into `s`; `None` for a family other than IPv4 and IPv6.
#[cfg(target_os = "linux")]
pub fn from_sockaddr(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
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

/// Bytes of control buffer a GSO send header needs ([`fill_send_header`]): `CMSG_SPACE(sizeof(u16))`.
#[cfg(target_os = "linux")]
pub fn gso_control_len() -> usize {
    // SAFETY: CMSG_SPACE is a pure size computation.
    unsafe { libc::CMSG_SPACE(std::mem::size_of::<u16>() as u32) as usize }
}

/// Fills send header `h`: destination `to` (written into `name`), the `iovlen` iovecs starting at `iov`, and
/// with `gso = Some((ctrl, size))` a `UDP_SEGMENT` control message written into `ctrl`, so that the kernel cuts
/// the bytes into datagrams of `size` bytes (the last may be shorter). `name`, `iov` and `ctrl` must stay in
/// place until the `sendmmsg` call that uses `h`.
///
/// # Panics
/// If `ctrl` is shorter than [`gso_control_len`] bytes.
#[cfg(target_os = "linux")]
#[inline]
pub fn fill_send_header(
    h: &mut libc::mmsghdr,
    name: &mut libc::sockaddr_storage,
    to: &SocketAddr,
    iov: &mut libc::iovec,
    iovlen: usize,
    gso: Option<(&mut [u64], u16)>,
) {
    let namelen = to_sockaddr(to, name);
    h.msg_len = 0;
    h.msg_hdr.msg_name = (name as *mut libc::sockaddr_storage).cast();
    h.msg_hdr.msg_namelen = namelen;
    h.msg_hdr.msg_iov = iov;
    h.msg_hdr.msg_iovlen = iovlen as _;
    h.msg_hdr.msg_flags = 0;
    match gso {
        Some((ctrl, size)) => {
            let space = gso_control_len();
            assert!(
                space <= std::mem::size_of_val(ctrl),
                "GSO control buffer too small"
            );
            h.msg_hdr.msg_control = ctrl.as_mut_ptr().cast();
            h.msg_hdr.msg_controllen = space as _;
            // SAFETY: the control buffer is 8-byte aligned and at least CMSG_SPACE(2) bytes long (checked
            // above), so CMSG_FIRSTHDR is non-null and the header plus its u16 payload fit in it.
            unsafe {
                let c = libc::CMSG_FIRSTHDR(&h.msg_hdr);
                (*c).cmsg_level = libc::SOL_UDP;
                (*c).cmsg_type = libc::UDP_SEGMENT;
                (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<u16>() as u32) as _;
                std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), size);
            }
        }
        None => {
            h.msg_hdr.msg_control = std::ptr::null_mut();
            h.msg_hdr.msg_controllen = 0;
        }
    }
}

/// System-call scratch for `N` messages: one iovec, header, address and control buffer each.
#[cfg(target_os = "linux")]
struct Sys<const N: usize> {
    iov: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    names: Vec<libc::sockaddr_storage>,
    /// Ancillary data (the kernel's receive timestamp, when enabled); u64 for cmsg alignment.
    ctrl: Vec<[u64; CTRL_WORDS]>,
}

/// Control buffer per message: room for one `SCM_TIMESTAMPNS` (a `timespec`) with its header.
#[cfg(target_os = "linux")]
const CTRL_WORDS: usize = 8;

/// Asks the kernel to stamp every datagram received on `fd` with its arrival time (`SO_TIMESTAMPNS`),
/// which [`RecvBatch::received_at`] then reports.
#[cfg(target_os = "linux")]
pub fn enable_rx_timestamps(fd: RawFd) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: a plain int option on a socket descriptor the caller owns.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Receive timestamps are a Linux feature here; elsewhere this does nothing.
#[cfg(not(target_os = "linux"))]
pub fn enable_rx_timestamps(_fd: RawFd) -> io::Result<()> {
    Ok(())
}

// SAFETY: the raw pointers in `Sys` are scratch, rewritten before every system call and never
// dereferenced by Rust code; moving the arrays to another thread is harmless.
#[cfg(target_os = "linux")]
unsafe impl<const N: usize> Send for Sys<N> {}

#[cfg(target_os = "linux")]
impl<const N: usize> Sys<N> {
    fn new() -> Sys<N> {
        // SAFETY: all-zero is a valid value of these plain C structs.
        unsafe {
            Sys {
                iov: vec![std::mem::zeroed(); N],
                hdrs: vec![std::mem::zeroed(); N],
                names: vec![std::mem::zeroed(); N],
                ctrl: vec![[0u64; CTRL_WORDS]; N],
            }
        }
    }
}

/// The `SCM_TIMESTAMPNS` receive time in a received message's control data, if any.
#[cfg(target_os = "linux")]
fn rx_timestamp(hdr: &libc::msghdr) -> Option<Duration> {
    // SAFETY: `hdr` was filled by recvmmsg: msg_control/msg_controllen describe the ancillary data the kernel
    // wrote into our control buffer; CMSG_FIRSTHDR/CMSG_NXTHDR stay within it.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(hdr);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                let ts = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::timespec>());
                return Some(Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32));
            }
            c = libc::CMSG_NXTHDR(hdr, c);
        }
    }
    None
}

/// Up to `N` received datagrams of up to `SLOT` bytes each, with their source addresses.
///
/// One buffer of `N * SLOT` bytes is allocated at creation; the pages of slots that are never filled
/// are never touched, so large slots cost address space, not memory.
pub struct RecvBatch<const N: usize, const SLOT: usize> {
    buf: Vec<u8>,
    lens: [usize; N],
    from: [Option<SocketAddr>; N],
    truncated: [bool; N],
    /// Kernel receive time (since the Unix epoch), when [`enable_rx_timestamps`] is on.
    stamps: [Option<Duration>; N],
    #[cfg(target_os = "linux")]
    sys: Sys<N>,
}

impl<const N: usize, const SLOT: usize> Default for RecvBatch<N, SLOT> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize, const SLOT: usize> RecvBatch<N, SLOT> {
    /// Most datagrams read by one [`RecvBatch::recv`].
    pub const BATCH: usize = N;
    /// Bytes per datagram slot: longer datagrams are truncated (see [`RecvBatch::truncated`]).
    pub const SLOT: usize = SLOT;

    /// Buffers for `N` datagrams of up to `SLOT` bytes (allocated here, once).
    pub fn new() -> Self {
        RecvBatch {
            buf: vec![0u8; N * SLOT],
            lens: [0; N],
            from: [None; N],
            truncated: [false; N],
            stamps: [None; N],
            #[cfg(target_os = "linux")]
            sys: Sys::new(),
        }
    }

    /// Receives what is queued on socket `fd` without blocking, at most `N` datagrams; returns how many,
    /// or an error of kind `WouldBlock` when nothing was queued.
    #[cfg(target_os = "linux")]
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        let base = self.buf.as_mut_ptr();
        for k in 0..N {
            // SAFETY: slot k lies inside `buf` (N * SLOT bytes).
            self.sys.iov[k].iov_base = unsafe { base.add(k * SLOT) }.cast();
            self.sys.iov[k].iov_len = SLOT;
            let h = &mut self.sys.hdrs[k];
            h.msg_len = 0;
            h.msg_hdr.msg_name = (&mut self.sys.names[k] as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as _;
            h.msg_hdr.msg_iov = &mut self.sys.iov[k];
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_control = self.sys.ctrl[k].as_mut_ptr().cast();
            h.msg_hdr.msg_controllen = std::mem::size_of::<[u64; CTRL_WORDS]>() as _;
            h.msg_hdr.msg_flags = 0;
        }
        // SAFETY: every header points at a live slot, iovec and name owned by `self`; no timeout.
        let r = unsafe {
            libc::recvmmsg(
                fd,
                self.sys.hdrs.as_mut_ptr(),
                N as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = r as usize;
        for k in 0..n {
            let h = &self.sys.hdrs[k];
            self.lens[k] = (h.msg_len as usize).min(SLOT);
            self.truncated[k] = h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            self.from[k] = from_sockaddr(&self.sys.names[k]);
            self.stamps[k] = rx_timestamp(&h.msg_hdr);
        }
        Ok(n)
    }

    /// Fallback: one `recvfrom` per datagram; returns how many, or the first call's error (`WouldBlock`
    /// when nothing was queued). Truncation is not detected here.
    #[cfg(not(target_os = "linux"))]
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        use std::os::fd::FromRawFd;
        // SAFETY: borrowed for this call only; ManuallyDrop keeps the fd open.
        let sock = std::mem::ManuallyDrop::new(unsafe { std::net::UdpSocket::from_raw_fd(fd) });
        let mut n = 0;
        while n < N {
            match sock.recv_from(&mut self.buf[n * SLOT..(n + 1) * SLOT]) {
                Ok((len, from)) => {
                    self.lens[n] = len;
                    self.from[n] = Some(from);
                    self.truncated[n] = false;
                    self.stamps[n] = None;
                    n += 1;
                }
                Err(e) if n == 0 => return Err(e),
                Err(_) => break,
            }
        }
        Ok(n)
    }

    /// Datagram `k` of the last [`RecvBatch::recv`] (at most `SLOT` bytes) and its source (`None`: an
    /// address family other than IPv4/IPv6). Panics if `k >= N`.
    pub fn get(&self, k: usize) -> (&[u8], Option<SocketAddr>) {
        (&self.buf[k * SLOT..k * SLOT + self.lens[k]], self.from[k])
    }

    /// When the kernel received datagram `k` of the last [`RecvBatch::recv`] (needs
    /// [`enable_rx_timestamps`] on the socket; `None` otherwise). Panics if `k >= N`.
    pub fn received_at(&self, k: usize) -> Option<SystemTime> {
        self.stamps[k].map(|d| UNIX_EPOCH + d)
    }

    /// Whether datagram `k` of the last [`RecvBatch::recv`] was longer than `SLOT` bytes and cut short.
    /// Panics if `k >= N`.
    pub fn truncated(&self, k: usize) -> bool {
        self.truncated[k]
    }

    /// Offset and length of `data` (a slice of datagram `k`) within that datagram's slot; `None` if
    /// `data` does not lie within the datagram.
    pub fn offset_in(&self, k: usize, data: &[u8]) -> Option<(usize, usize)> {
        let slot = self.buf[k * SLOT..].as_ptr() as usize;
        let start = (data.as_ptr() as usize).checked_sub(slot)?;
        (start + data.len() <= self.lens[k]).then_some((start, data.len()))
    }
}

/// Scratch for sending up to `N` datagrams, each from its own slice to its own destination, in
/// `sendmmsg` calls without segmentation offload (Linux), or one `sendto` per datagram elsewhere.
pub struct PlainSend<const N: usize> {
    #[cfg(target_os = "linux")]
    sys: Sys<N>,
}

impl<const N: usize> Default for PlainSend<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> PlainSend<N> {
    /// Scratch for `N` messages (allocated here, once).
    pub fn new() -> Self {
        PlainSend {
            #[cfg(target_os = "linux")]
            sys: Sys::new(),
        }
    }

    /// Sends datagrams `item(0..n)` (`n` capped at `N`) on non-blocking socket `fd`: in `sendmmsg` calls
    /// on Linux, one `sendto` each elsewhere. Returns how many the kernel took. A full socket buffer
    /// (`WouldBlock`) ends the send early without an error; another error is returned only if nothing was
    /// sent.
    pub fn send<'a>(
        &mut self,
        fd: RawFd,
        n: usize,
        item: impl Fn(usize) -> (&'a [u8], SocketAddr),
    ) -> io::Result<usize> {
        let n = n.min(N);
        #[cfg(not(target_os = "linux"))]
        {
            use std::os::fd::FromRawFd;
            // SAFETY: borrowed for this call only; ManuallyDrop keeps the fd open.
            let sock = std::mem::ManuallyDrop::new(unsafe { std::net::UdpSocket::from_raw_fd(fd) });
            let mut done = 0;
            for k in 0..n {
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
        #[cfg(target_os = "linux")]
        {
            let sys = &mut self.sys;
            let mut done = 0;
            while done < n {
                let m = n - done;
                for j in 0..m {
                    let (data, to) = item(done + j);
                    sys.iov[j].iov_base = data.as_ptr() as *mut libc::c_void;
                    sys.iov[j].iov_len = data.len();
                    fill_send_header(
                        &mut sys.hdrs[j],
                        &mut sys.names[j],
                        &to,
                        &mut sys.iov[j],
                        1,
                        None,
                    );
                }
                // SAFETY: the first `m` headers point at live iovecs (over slices borrowed for 'a) and
                // names.
                let r = unsafe {
                    libc::sendmmsg(fd, sys.hdrs.as_mut_ptr(), m as _, libc::MSG_DONTWAIT)
                };
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::time::Duration;

    fn frame(k: u8, len: usize) -> Vec<u8> {
        (0..len).map(|i| k.wrapping_add(i as u8)).collect()
    }

    #[test]
    fn recv_batch_reads_several_datagrams_with_their_sources() {
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        b.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let to_b = b.local_addr().unwrap();
        for k in 0..5u8 {
            a.send_to(&frame(k, 200 + k as usize), to_b).unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
        let mut r = RecvBatch::<32, 2048>::new();
        let n = r.recv(b.as_raw_fd()).expect("datagrams waiting");
        assert_eq!(n, 5);
        for k in 0..5 {
            let (d, from) = r.get(k);
            assert_eq!(d, frame(k as u8, 200 + k).as_slice());
            assert_eq!(from, Some(a.local_addr().unwrap()));
            assert!(!r.truncated(k));
        }
        b.set_nonblocking(true).unwrap();
        let e = r.recv(b.as_raw_fd()).expect_err("nothing waiting");
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn receive_timestamps_are_reported_only_when_enabled_and_fall_between_send_and_receive() {
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let plain = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let stamped = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        enable_rx_timestamps(stamped.as_raw_fd()).expect("SO_TIMESTAMPNS");
        let before = SystemTime::now();
        a.send_to(b"x", plain.local_addr().unwrap()).unwrap();
        a.send_to(b"y", stamped.local_addr().unwrap()).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let mut r = RecvBatch::<4, 64>::new();
        assert_eq!(r.recv(plain.as_raw_fd()).expect("datagram"), 1);
        assert_eq!(r.received_at(0), None, "no timestamp unless enabled");
        assert_eq!(r.recv(stamped.as_raw_fd()).expect("datagram"), 1);
        let at = r.received_at(0).expect("a kernel receive timestamp");
        let after = SystemTime::now();
        assert!(
            at >= before && at <= after,
            "{at:?} not within the send/receive window"
        );
    }

    #[test]
    fn round_trip_keeps_order_sources_and_sizes_in_large_slots() {
        let a = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind a");
        let b = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind b");
        b.set_nonblocking(true).expect("nonblocking");
        let to = b.local_addr().expect("addr");
        // Five of growing size, then one bigger than any MTU that still fits a slot.
        let data: Vec<Vec<u8>> = (0..5usize)
            .map(|k| vec![k as u8; 1 + k * 1000])
            .chain(std::iter::once(vec![9u8; 60_000]))
            .collect();
        let mut s = PlainSend::<32>::new();
        let sent = s
            .send(a.as_raw_fd(), data.len(), |k| (data[k].as_slice(), to))
            .expect("send");
        assert_eq!(sent, 6);
        std::thread::sleep(Duration::from_millis(50));
        let mut rb = RecvBatch::<32, 65536>::new();
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
            rb.offset_in(0, &data[0]),
            None,
            "not a slice of the datagram"
        );
        assert_eq!(
            rb.recv(b.as_raw_fd()).map_err(|e| e.kind()),
            Err(io::ErrorKind::WouldBlock),
            "nothing queued"
        );
        // IPv6 addresses survive the sockaddr conversion both ways.
        if let (Ok(c), Ok(d)) = (
            std::net::UdpSocket::bind("[::1]:0"),
            std::net::UdpSocket::bind("[::1]:0"),
        ) {
            d.set_nonblocking(true).expect("nonblocking");
            let to = d.local_addr().expect("addr");
            let sent = s
                .send(c.as_raw_fd(), 2, |_| (b"v6".as_slice(), to))
                .expect("send v6");
            assert_eq!(sent, 2);
            std::thread::sleep(Duration::from_millis(50));
            assert_eq!(rb.recv(d.as_raw_fd()).expect("recv v6"), 2);
            assert_eq!(
                rb.get(1),
                (b"v6".as_slice(), Some(c.local_addr().expect("addr")))
            );
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_datagram_longer_than_its_slot_is_flagged_truncated() {
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        b.set_nonblocking(true).unwrap();
        let to_b = b.local_addr().unwrap();
        a.send_to(&frame(1, 3000), to_b).unwrap();
        a.send_to(&frame(2, 100), to_b).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let mut r = RecvBatch::<4, 2048>::new();
        assert_eq!(r.recv(b.as_raw_fd()).unwrap(), 2);
        assert!(r.truncated(0));
        assert_eq!(r.get(0).0, &frame(1, 3000)[..2048]);
        assert!(!r.truncated(1));
        assert_eq!(r.get(1).0, frame(2, 100).as_slice());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn sockaddr_conversions_round_trip() {
        let addrs: [SocketAddr; 3] = [
            "192.0.2.7:3478".parse().unwrap(),
            "[2001:db8::1]:7882".parse().unwrap(),
            SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::LOCALHOST, 9, 0x12345, 3)),
        ];
        for addr in addrs {
            // SAFETY: all-zero is a valid sockaddr_storage.
            let mut s: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
            let len = to_sockaddr(&addr, &mut s) as usize;
            let want = match addr {
                SocketAddr::V4(_) => std::mem::size_of::<libc::sockaddr_in>(),
                SocketAddr::V6(_) => std::mem::size_of::<libc::sockaddr_in6>(),
            };
            assert_eq!(len, want);
            assert_eq!(from_sockaddr(&s), Some(addr));
        }
        // SAFETY: as above.
        let unspec: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        assert_eq!(from_sockaddr(&unspec), None);
    }
}
