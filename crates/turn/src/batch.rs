//! Batched UDP I/O for the relay hot path: `recvmmsg`/`sendmmsg` on Linux (one system call for up to
//! [`BATCH`] datagrams), a one-datagram-per-call fallback elsewhere. All buffers are allocated once,
//! when a batch object is created; nothing is allocated per datagram. The system calls themselves (and the
//! sockaddr conversions) are in the `udpio` crate, shared with the SFU; the relay's grouping of same-size
//! runs into GSO sends is here.

use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;

use udpio::PlainSend;

/// Most datagrams per system call.
pub(crate) const BATCH: usize = 32;
/// Receive slot: the largest UDP payload. The pages of unused slots are never touched, so they cost
/// address space, not memory.
pub(crate) const SLOT: usize = 65536;

/// Up to [`BATCH`] received datagrams with their source addresses.
pub(crate) struct RecvBatch(udpio::RecvBatch<BATCH, SLOT>);

impl RecvBatch {
    pub(crate) fn new() -> RecvBatch {
        RecvBatch(udpio::RecvBatch::new())
    }

    /// Receive what is queued on non-blocking socket `fd`, at most [`BATCH`] datagrams; `Ok(0)` means
    /// nothing was queued.
    pub(crate) fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        match self.0.recv(fd) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
            r => r,
        }
    }

    /// Datagram `k` of the last [`RecvBatch::recv`] and its source (None: unknown address family).
    pub(crate) fn get(&self, k: usize) -> (&[u8], Option<SocketAddr>) {
        self.0.get(k)
    }

    /// Offset of `data` (a slice of datagram `k`) within that datagram's slot.
    pub(crate) fn offset_in(&self, k: usize, data: &[u8]) -> Option<(usize, usize)> {
        self.0.offset_in(k, data)
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
    plain: PlainSend<BATCH>,
    #[cfg(target_os = "linux")]
    gso: gso::Scratch,
}

impl SendBatch {
    pub(crate) fn new(capacity: usize) -> SendBatch {
        SendBatch {
            bufs: (0..BATCH).map(|_| Vec::with_capacity(capacity)).collect(),
            dest: [None; BATCH],
            len: 0,
            plain: PlainSend::new(),
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
        let (bufs, dest) = (&self.bufs, &self.dest);
        self.plain.send(fd, n, |k| {
            (
                bufs[k].as_slice(),
                dest[k].unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0))),
            )
        })
    }
}

/// Scratch for sending datagrams from the caller's slices (plain `sendmmsg`; GSO as in [`SendBatch`]).
pub(crate) struct SendScratch {
    plain: PlainSend<BATCH>,
    #[cfg(target_os = "linux")]
    gso: gso::Scratch,
}

impl SendScratch {
    pub(crate) fn new() -> SendScratch {
        SendScratch {
            plain: PlainSend::new(),
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
        self.plain.send(fd, n, item)
    }
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
        // The receive side itself (slots, offsets, IPv6 sockaddrs) is tested in `udpio`.
        let mut rb = RecvBatch::new();
        assert_eq!(rb.recv(b.as_raw_fd()).expect("recv"), 6);
        let from = Some(a.local_addr().expect("addr"));
        let got: Vec<_> = (0..6).map(|k| rb.get(k)).collect();
        for (k, (d, src)) in got.iter().enumerate() {
            let (len, byte) = if k < 5 {
                (1 + k * 1000, k as u8)
            } else {
                (60_000, 9)
            };
            assert_eq!((d.len(), *src), (len, from), "datagram {k}");
            assert!(d.iter().all(|x| *x == byte));
        }
        assert_eq!(
            rb.recv(b.as_raw_fd()).expect("empty"),
            0,
            "nothing queued → 0"
        );
        // IPv6 destinations through the relay's send path (GSO when enabled).
        if let (Ok(c), Ok(d)) = (
            std::net::UdpSocket::bind("[::1]:0"),
            std::net::UdpSocket::bind("[::1]:0"),
        ) {
            d.set_nonblocking(true).expect("nonblocking");
            let to = d.local_addr().expect("addr");
            let mut s = SendScratch::new();
            let v6 = |_| (b"v6".as_slice(), to);
            assert_eq!(s.send(c.as_raw_fd(), 2, v6).expect("send v6"), 2);
            std::thread::sleep(std::time::Duration::from_millis(50));
            assert_eq!(rb.recv(d.as_raw_fd()).expect("recv v6"), 2);
            let src = Some(c.local_addr().expect("addr"));
            assert_eq!(rb.get(1), (b"v6".as_slice(), src));
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

    use udpio::{fill_send_header, PlainSend};

    use super::BATCH;

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
        fallback: PlainSend<BATCH>,
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
                    fallback: PlainSend::new(),
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
                let gso = (run > 1).then(|| (&mut self.ctrl[m][..], seg as u16));
                fill_send_header(
                    &mut self.hdrs[m],
                    &mut self.names[m],
                    &to,
                    &mut self.iov[k],
                    run,
                    gso,
                );
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
                        let rest = self.fallback.send(fd, n - done, |j| item(done + j));
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
