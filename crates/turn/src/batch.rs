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
/// On Linux a run of consecutive datagrams for the same destination with the same size (the last may be
/// shorter) leaves as one GSO send (`UDP_SEGMENT`): the kernel builds and routes one buffer and splits it
/// into the original datagrams, instead of traversing the stack once per datagram.
pub(crate) struct SendBatch {
    /// Per-datagram buffers (capacity reserved once).
    pub(crate) bufs: Vec<Vec<u8>>,
    dest: [Option<SocketAddr>; BATCH],
    len: usize,
    #[cfg(target_os = "linux")]
    sys: Sys,
    #[cfg(target_os = "linux")]
    gso: gso::Scratch,
}

impl SendBatch {
    pub(crate) fn new(capacity: usize) -> SendBatch {
        SendBatch {
            bufs: (0..BATCH).map(|_| Vec::with_capacity(capacity)).collect(),
            dest: [None; BATCH],
            len: 0,
            #[cfg(target_os = "linux")]
            sys: Sys::new(),
            #[cfg(target_os = "linux")]
            gso: gso::Scratch::new(),
        }
    }

    /// GSO sends made so far (each one carried several datagrams).
    #[cfg(all(test, target_os = "linux"))]
    pub(crate) fn gso_sends(&self) -> u64 {
        self.gso.sends
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
        #[cfg(target_os = "linux")]
        if gso::enabled() {
            let (bufs, dest) = (&self.bufs, &self.dest);
            let item = |k: usize| {
                let to = dest[k].unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
                (bufs[k].as_slice(), to)
            };
            return self.gso.send(fd, n, item);
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

/// Scratch for [`send_slices`] (Linux: iovecs, headers, addresses; GSO as in [`SendBatch`]).
pub(crate) struct SendScratch {
    #[cfg(target_os = "linux")]
    sys: Sys,
    #[cfg(target_os = "linux")]
    gso: gso::Scratch,
}

impl SendScratch {
    pub(crate) fn new() -> SendScratch {
        SendScratch {
            #[cfg(target_os = "linux")]
            sys: Sys::new(),
            #[cfg(target_os = "linux")]
            gso: gso::Scratch::new(),
        }
    }

    /// Send `n` (≤ [`BATCH`]) datagrams `item(k)` on non-blocking socket `fd`; returns how many left.
    pub(crate) fn send<'a>(
        &mut self,
        fd: RawFd,
        n: usize,
        item: impl Fn(usize) -> (&'a [u8], SocketAddr),
    ) -> io::Result<usize> {
        #[cfg(target_os = "linux")]
        if gso::enabled() {
            return self.gso.send(fd, n, item);
        }
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

    #[cfg(target_os = "linux")]
    #[test]
    fn gso_runs_arrive_as_the_original_datagrams_in_order() {
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind tx");
        let a = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind a");
        let b = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind b");
        let (to_a, to_b) = (a.local_addr().expect("a"), b.local_addr().expect("b"));
        // (destination, size): a run of five for a ending with a shorter one, three for b, one for a,
        // then two too large to be segments.
        let plan = [
            (to_a, 100),
            (to_a, 100),
            (to_a, 100),
            (to_a, 100),
            (to_a, 60),
            (to_b, 100),
            (to_b, 100),
            (to_b, 100),
            (to_a, 100),
            (to_b, 2000),
            (to_b, 2000),
        ];
        let mut sb = SendBatch::new(4096);
        for (i, (to, size)) in plan.iter().enumerate() {
            let buf = sb.next_buf().expect("room");
            buf.resize(*size, i as u8);
            sb.commit(*to);
        }
        assert_eq!(sb.flush(tx.as_raw_fd()).expect("send"), plan.len());
        assert!(gso::enabled(), "loopback segments");
        assert_eq!(
            sb.gso_sends(),
            2,
            "the run of five for a and the three for b"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
        let mut rb = RecvBatch::new();
        for (sock, to) in [(&a, to_a), (&b, to_b)] {
            let want: Vec<(usize, u8)> = plan
                .iter()
                .enumerate()
                .filter(|(_, (d, _))| *d == to)
                .map(|(i, (_, size))| (*size, i as u8))
                .collect();
            sock.set_nonblocking(true).expect("nonblocking");
            let n = rb.recv(sock.as_raw_fd()).expect("recv");
            let got: Vec<(usize, u8)> = (0..n)
                .map(|k| {
                    let (d, from) = rb.get(k);
                    assert_eq!(from, Some(tx.local_addr().expect("tx")));
                    assert!(d.iter().all(|x| *x == d[0]), "one datagram's bytes only");
                    (d.len(), d[0])
                })
                .collect();
            assert_eq!(got, want);
        }
    }

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

/// Generic segmentation offload for UDP sends (`UDP_SEGMENT`, Linux ≥ 4.18).
#[cfg(target_os = "linux")]
mod gso {
    use std::io;
    use std::net::SocketAddr;
    use std::os::fd::RawFd;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::{send_slices, to_sockaddr, Sys, BATCH};

    const SOL_UDP: libc::c_int = 17;
    const UDP_SEGMENT: libc::c_int = 103;
    /// Largest datagram sent as a segment: the segment plus headers must fit the interface MTU, so only
    /// datagrams that fit an Ethernet frame are grouped (larger ones leave one by one).
    const MAX_SEGMENT: usize = 1472;
    /// Most bytes in one GSO send (a UDP datagram's limit, with room to spare).
    const MAX_BYTES: usize = 65_000;
    /// Control buffer per header: CMSG_SPACE(sizeof(u16)) = 24 bytes, as u64s for alignment.
    const CTRL_WORDS: usize = 4;

    /// Cleared for good when the kernel or a device refuses a GSO send (then sends are per datagram).
    static ENABLED: AtomicBool = AtomicBool::new(true);

    pub(super) fn enabled() -> bool {
        ENABLED.load(Ordering::Relaxed)
    }

    /// Scratch of [`Scratch::send`]: iovecs (one per datagram), headers and names (one per run),
    /// control buffers for the segment size, and how many datagrams each header carries.
    pub(super) struct Scratch {
        iov: Vec<libc::iovec>,
        hdrs: Vec<libc::mmsghdr>,
        names: Vec<libc::sockaddr_storage>,
        ctrl: Vec<[u64; CTRL_WORDS]>,
        count: [usize; BATCH],
        /// GSO sends made (for tests).
        pub(super) sends: u64,
        /// Scratch of the one-by-one fallback.
        fallback: Sys,
    }

    // SAFETY: the raw pointers are scratch, rewritten before every system call and never dereferenced by
    // Rust code; moving the arrays to another thread is harmless.
    unsafe impl Send for Scratch {}

    impl Scratch {
        pub(super) fn new() -> Scratch {
            // SAFETY: all-zero is a valid value of these plain C structs.
            unsafe {
                Scratch {
                    iov: vec![std::mem::zeroed(); BATCH],
                    hdrs: vec![std::mem::zeroed(); BATCH],
                    names: vec![std::mem::zeroed(); BATCH],
                    ctrl: vec![[0u64; CTRL_WORDS]; BATCH],
                    count: [0; BATCH],
                    sends: 0,
                    fallback: Sys::new(),
                }
            }
        }

        /// Send datagrams `item(0..n)` (n at most [`BATCH`]) on non-blocking socket `fd`, each run of
        /// equal-size datagrams for one destination (the last may be shorter) as one GSO send; returns
        /// how many datagrams the kernel took.
        pub(super) fn send<'a>(
            &mut self,
            fd: RawFd,
            n: usize,
            item: impl Fn(usize) -> (&'a [u8], SocketAddr),
        ) -> io::Result<usize> {
            let n = n.min(BATCH);
            for k in 0..n {
                let (b, _) = item(k);
                self.iov[k].iov_base = b.as_ptr() as *mut libc::c_void;
                self.iov[k].iov_len = b.len();
            }
            // One header per run.
            let mut m = 0;
            let mut k = 0;
            while k < n {
                let to = item(k).1;
                let seg = self.iov[k].iov_len;
                let mut run = 1;
                if (1..=MAX_SEGMENT).contains(&seg) {
                    let mut total = seg;
                    while k + run < n && item(k + run).1 == to {
                        let len = self.iov[k + run].iov_len;
                        if len == 0 || len > seg || total + len > MAX_BYTES {
                            break;
                        }
                        total += len;
                        run += 1;
                        if len < seg {
                            break; // a shorter datagram ends a run
                        }
                    }
                }
                let namelen = to_sockaddr(&to, &mut self.names[m]);
                let h = &mut self.hdrs[m];
                h.msg_len = 0;
                h.msg_hdr.msg_name = (&mut self.names[m] as *mut libc::sockaddr_storage).cast();
                h.msg_hdr.msg_namelen = namelen;
                h.msg_hdr.msg_iov = &mut self.iov[k];
                h.msg_hdr.msg_iovlen = run as _;
                h.msg_hdr.msg_flags = 0;
                if run > 1 {
                    h.msg_hdr.msg_control = self.ctrl[m].as_mut_ptr().cast();
                    // SAFETY: CMSG_SPACE(2) = 24 bytes fit the 32-byte, 8-aligned control buffer; the
                    // header is written through CMSG_FIRSTHDR of that buffer, the value through CMSG_DATA.
                    unsafe {
                        h.msg_hdr.msg_controllen = libc::CMSG_SPACE(2) as _;
                        let c = libc::CMSG_FIRSTHDR(&h.msg_hdr);
                        (*c).cmsg_level = SOL_UDP;
                        (*c).cmsg_type = UDP_SEGMENT;
                        (*c).cmsg_len = libc::CMSG_LEN(2) as _;
                        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), seg as u16);
                    }
                } else {
                    h.msg_hdr.msg_control = std::ptr::null_mut();
                    h.msg_hdr.msg_controllen = 0;
                }
                self.count[m] = run;
                m += 1;
                k += run;
            }
            let mut done_hdrs = 0;
            let mut done = 0;
            while done_hdrs < m {
                // SAFETY: headers done_hdrs..m point at live iovecs (over the caller's slices), names
                // and control buffers owned by `self`.
                let r = unsafe {
                    libc::sendmmsg(
                        fd,
                        self.hdrs[done_hdrs..].as_mut_ptr(),
                        (m - done_hdrs) as _,
                        libc::MSG_DONTWAIT,
                    )
                };
                if r <= 0 {
                    let e = io::Error::last_os_error();
                    if r == 0 || e.kind() == io::ErrorKind::WouldBlock {
                        return Ok(done);
                    }
                    if self.count[done_hdrs] > 1 {
                        // The kernel or the device cannot segment (EIO, EINVAL, ...): stop using GSO
                        // and send the rest one datagram per header.
                        ENABLED.store(false, Ordering::Relaxed);
                        tracing::warn!(error = %e, "UDP GSO send refused; sending datagrams one by one");
                        let rest =
                            send_slices(fd, n - done, |j| item(done + j), &mut self.fallback);
                        return Ok(done + rest.unwrap_or(0));
                    }
                    return if done == 0 { Err(e) } else { Ok(done) };
                }
                for c in &self.count[done_hdrs..done_hdrs + r as usize] {
                    if *c > 1 {
                        self.sends += 1;
                    }
                    done += c;
                }
                done_hdrs += r as usize;
            }
            Ok(done)
        }
    }
}
