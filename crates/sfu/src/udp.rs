//! Batched UDP I/O for the SFU's one media socket.
//!
//! Sending: every datagram the engine emits during one wake-up is copied into one reused buffer and the whole
//! batch leaves in one `sendmmsg` call. Consecutive datagrams to the same address (a subscriber's packets of
//! one received batch come out of its `Rtc` back to back) are merged into one UDP GSO message (`UDP_SEGMENT`): the
//! kernel walks its UDP/IP/routing path once per message instead of once per datagram, and cuts the segments
//! apart as late as possible. Segments of a GSO message all have the size of the first one but the last,
//! which may be shorter. When the kernel refuses GSO (no checksum offload on the route, an old kernel), the
//! batch falls back to one datagram per message for good.
//!
//! Receiving: `recvmmsg` into fixed slots (`udpio::RecvBatch`, shared with the TURN relay, as is the sockaddr
//! conversion).
//!
//! All buffers are allocated when a batch is created; nothing is allocated per datagram. A full socket
//! buffer (`EAGAIN`) drops what is left of the batch, as a router would: sends never block the engine.

use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;

/// Most messages (each one datagram or one GSO train) per `sendmmsg`.
const MAX_MSGS: usize = 256;
/// Bytes buffered before a batch is flushed early.
const SEND_BYTES: usize = 512 * 1024;
/// Most segments in one GSO message (the kernel's `UDP_MAX_SEGMENTS` is 64 on older kernels).
const MAX_SEGMENTS: usize = 64;
/// Largest GSO message (a UDP datagram's payload limit, with room for headers).
const MAX_GSO_BYTES: usize = 60_000;
/// Datagrams read per `recvmmsg`.
pub(crate) const RECV_BATCH: usize = 32;
/// Receive slot size: larger datagrams are truncated and dropped (media packets are ~1200 bytes).
pub(crate) const RECV_SLOT: usize = 2048;

/// One queued message: a datagram, or a train of equal-sized segments to one address.
#[derive(Debug, Clone, Copy)]
struct Msg {
    dest: SocketAddr,
    start: usize,
    len: usize,
    /// Segment size (the first datagram's length).
    seg: usize,
    segments: usize,
    /// A shorter last segment was appended: nothing more may follow.
    closed: bool,
}

/// Counters of one batch's life, for tests and debugging.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SendStats {
    /// Datagrams handed to the kernel.
    pub datagrams: u64,
    /// `sendmmsg`/`sendto` calls.
    pub calls: u64,
    /// Datagrams dropped (full socket buffer, unreachable destination).
    pub dropped: u64,
}

/// Outgoing datagrams of one engine wake-up.
pub(crate) struct SendBatch {
    buf: Vec<u8>,
    msgs: Vec<Msg>,
    gso: bool,
    stats: SendStats,
    #[cfg(target_os = "linux")]
    sys: SendSys,
}

#[cfg(target_os = "linux")]
struct SendSys {
    names: Vec<libc::sockaddr_storage>,
    iov: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    /// One `UDP_SEGMENT` control message per message (8-byte aligned).
    cmsgs: Vec<[u64; 4]>,
}

// SAFETY: the raw pointers in `SendSys` only ever point into buffers owned by the same `SendBatch`, and are
// rewritten before every system call; nothing is shared between threads.
#[cfg(target_os = "linux")]
unsafe impl Send for SendSys {}

impl SendBatch {
    /// A batch; `gso` allows merging datagrams to one address into one GSO message.
    pub(crate) fn new(gso: bool) -> SendBatch {
        SendBatch {
            buf: Vec::with_capacity(SEND_BYTES),
            msgs: Vec::with_capacity(MAX_MSGS),
            gso: gso && cfg!(target_os = "linux"),
            stats: SendStats::default(),
            #[cfg(target_os = "linux")]
            sys: SendSys {
                // SAFETY: all-zero bytes are valid values of these plain C structs.
                names: vec![unsafe { std::mem::zeroed() }; MAX_MSGS],
                iov: vec![
                    libc::iovec {
                        iov_base: std::ptr::null_mut(),
                        iov_len: 0
                    };
                    MAX_MSGS
                ],
                hdrs: vec![unsafe { std::mem::zeroed() }; MAX_MSGS],
                cmsgs: vec![[0u64; 4]; MAX_MSGS],
            },
        }
    }

    #[cfg(test)]
    /// Whether datagrams to one address are merged (GSO has not been refused so far).
    pub(crate) fn gso(&self) -> bool {
        self.gso
    }

    #[cfg(test)]
    /// Counters so far.
    pub(crate) fn stats(&self) -> SendStats {
        self.stats
    }

    #[cfg(test)]
    /// Whether nothing is waiting.
    pub(crate) fn is_empty(&self) -> bool {
        self.msgs.is_empty()
    }

    /// Messages waiting (a GSO message of several datagrams counts once).
    pub(crate) fn len(&self) -> usize {
        self.msgs.len()
    }

    /// Queues one datagram (flushing first when the batch is full).
    pub(crate) fn push(&mut self, fd: RawFd, dest: SocketAddr, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        if data.len() > SEND_BYTES {
            self.flush(fd);
            self.send_one(fd, dest, data);
            return;
        }
        let room = self.buf.len() + data.len() <= SEND_BYTES;
        if self.gso && room {
            if let Some(last) = self.msgs.last_mut() {
                if last.dest == dest
                    && !last.closed
                    && data.len() <= last.seg
                    && last.segments < MAX_SEGMENTS
                    && last.len + data.len() <= MAX_GSO_BYTES
                {
                    last.len += data.len();
                    last.segments += 1;
                    last.closed = data.len() < last.seg;
                    self.buf.extend_from_slice(data);
                    return;
                }
            }
        }
        if !room || self.msgs.len() == MAX_MSGS {
            self.flush(fd);
        }
        self.msgs.push(Msg {
            dest,
            start: self.buf.len(),
            len: data.len(),
            seg: data.len(),
            segments: 1,
            closed: false,
        });
        self.buf.extend_from_slice(data);
    }

    /// Sends everything queued.
    pub(crate) fn flush(&mut self, fd: RawFd) {
        if self.msgs.is_empty() {
            return;
        }
        let dropped = self.stats.dropped;
        self.send_all(fd);
        if self.stats.dropped > dropped {
            metrics::counter!("sfu_udp_send_dropped_total").increment(self.stats.dropped - dropped);
        }
        self.msgs.clear();
        self.buf.clear();
    }

    #[cfg(target_os = "linux")]
    fn send_all(&mut self, fd: RawFd) {
        let n = self.msgs.len();
        let base = self.buf.as_ptr();
        for (k, m) in self.msgs.iter().enumerate() {
            let sys = &mut self.sys;
            // SAFETY: `start + len` is within `buf` (both were set when the bytes were appended).
            sys.iov[k].iov_base = unsafe { base.add(m.start) } as *mut libc::c_void;
            sys.iov[k].iov_len = m.len;
            let gso = (m.segments > 1).then(|| (&mut sys.cmsgs[k][..], m.seg as u16));
            udpio::fill_send_header(
                &mut sys.hdrs[k],
                &mut sys.names[k],
                &m.dest,
                &mut sys.iov[k],
                1,
                gso,
            );
        }
        let mut done = 0;
        while done < n {
            // SAFETY: hdrs[done..n] were filled above and point into live buffers of `self`.
            let r = unsafe {
                libc::sendmmsg(
                    fd,
                    self.sys.hdrs.as_mut_ptr().add(done),
                    (n - done) as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            self.stats.calls += 1;
            if r > 0 {
                let sent = r as usize;
                self.stats.datagrams += self.msgs[done..done + sent]
                    .iter()
                    .map(|m| m.segments as u64)
                    .sum::<u64>();
                done += sent;
                continue;
            }
            let e = io::Error::last_os_error();
            let m = self.msgs[done];
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EAGAIN) => {
                    let left: u64 = self.msgs[done..].iter().map(|m| m.segments as u64).sum();
                    self.stats.dropped += left;
                    tracing::trace!(left, "SFU socket buffer full: rest of the batch dropped");
                    return;
                }
                Some(libc::EIO | libc::EINVAL) if m.segments > 1 => {
                    // GSO refused on this route or kernel: one datagram at a time from now on.
                    tracing::info!("SFU: UDP GSO refused ({e}): sending one datagram per message");
                    self.gso = false;
                    let mut at = m.start;
                    let end = m.start + m.len;
                    while at < end {
                        let len = m.seg.min(end - at);
                        let (s, e2) = (at, at + len);
                        let data = &self.buf[s..e2];
                        send_to(fd, m.dest, data, &mut self.stats);
                        at = e2;
                    }
                }
                _ => {
                    tracing::trace!(dest = %m.dest, "SFU send failed: {e}");
                    self.stats.dropped += m.segments as u64;
                }
            }
            done += 1;
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn send_all(&mut self, fd: RawFd) {
        for k in 0..self.msgs.len() {
            let m = self.msgs[k];
            send_to(
                fd,
                m.dest,
                &self.buf[m.start..m.start + m.len],
                &mut self.stats,
            );
        }
    }

    fn send_one(&mut self, fd: RawFd, dest: SocketAddr, data: &[u8]) {
        send_to(fd, dest, data, &mut self.stats);
    }
}

/// One datagram with `sendto` on the (non-blocking) socket.
fn send_to(fd: RawFd, dest: SocketAddr, data: &[u8], stats: &mut SendStats) {
    use std::os::fd::BorrowedFd;
    // SAFETY: the engine owns the socket for as long as it sends; the borrow ends with this call.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    let sock = socket2::SockRef::from(&fd);
    stats.calls += 1;
    match sock.send_to(data, &dest.into()) {
        Ok(_) => stats.datagrams += 1,
        Err(e) => {
            tracing::trace!(%dest, "SFU send dropped: {e}");
            stats.dropped += 1;
        }
    }
}

/// Datagrams read in one `recvmmsg` (the system call and its buffers are `udpio`'s, shared with TURN).
pub(crate) struct RecvBatch(udpio::RecvBatch<RECV_BATCH, RECV_SLOT>);

impl RecvBatch {
    /// Buffers for [`RECV_BATCH`] datagrams of up to [`RECV_SLOT`] bytes.
    pub(crate) fn new() -> RecvBatch {
        RecvBatch(udpio::RecvBatch::new())
    }

    /// Reads what is waiting (without blocking): the number of datagrams, `WouldBlock` when there is none.
    pub(crate) fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        self.0.recv(fd)
    }

    /// Datagram `k` of the last read and its source (`None` for a truncated, empty or unaddressed one).
    pub(crate) fn get(&self, k: usize) -> Option<(&[u8], SocketAddr)> {
        if k >= RECV_BATCH || self.0.truncated(k) {
            return None;
        }
        let (data, from) = self.0.get(k);
        let from = from?;
        (!data.is_empty()).then_some((data, from))
    }

    /// When the kernel received datagram `k` (with receive timestamps on, see [`udpio::enable_rx_timestamps`]).
    pub(crate) fn received_at(&self, k: usize) -> Option<std::time::SystemTime> {
        (k < RECV_BATCH).then(|| self.0.received_at(k)).flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::time::Duration;

    fn pair() -> (std::net::UdpSocket, std::net::UdpSocket) {
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        b.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        // Room for a whole batch (a datagram costs ~1 KiB of receive buffer however small).
        socket2::SockRef::from(&b)
            .set_recv_buffer_size(4 << 20)
            .unwrap();
        (a, b)
    }

    fn received(b: &std::net::UdpSocket, n: usize) -> Vec<Vec<u8>> {
        let mut buf = [0u8; 65536];
        (0..n)
            .map(|_| {
                let (len, _) = b.recv_from(&mut buf).expect("datagram");
                buf[..len].to_vec()
            })
            .collect()
    }

    /// Datagrams of sizes 1200, 1200, 1200, 700 to one address, then one to another, then 1200 again.
    fn frame(k: u8, len: usize) -> Vec<u8> {
        (0..len).map(|i| k.wrapping_add(i as u8)).collect()
    }

    #[test]
    fn one_flush_delivers_every_datagram_intact_and_in_order_with_gso() {
        let (a, b) = pair();
        let c = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let (to_b, to_c) = (b.local_addr().unwrap(), c.local_addr().unwrap());
        let mut batch = SendBatch::new(true);
        let fd = a.as_raw_fd();
        let sizes = [1200, 1200, 1200, 700, 1200, 1200];
        for (k, &len) in sizes.iter().enumerate() {
            batch.push(fd, to_b, &frame(k as u8, len));
        }
        batch.push(fd, to_c, &frame(99, 300));
        batch.push(fd, to_b, &frame(100, 50));
        batch.flush(fd);
        assert!(batch.is_empty());
        let got = received(&b, sizes.len() + 1);
        for (k, &len) in sizes.iter().enumerate() {
            assert_eq!(got[k], frame(k as u8, len), "datagram {k} to b");
        }
        assert_eq!(got[sizes.len()], frame(100, 50));
        assert_eq!(received(&c, 1)[0], frame(99, 300));
        let s = batch.stats();
        assert_eq!(s.datagrams, 8);
        assert_eq!(s.dropped, 0);
        assert!(batch.gso(), "loopback takes UDP GSO");
        // 1200×3+700 | 1200×2 | 300 (to c) | 50: four messages, one sendmmsg.
        assert_eq!(s.calls, 1);
    }

    #[test]
    fn without_gso_each_datagram_is_its_own_message_and_still_one_call() {
        let (a, b) = pair();
        let to_b = b.local_addr().unwrap();
        let mut batch = SendBatch::new(false);
        let fd = a.as_raw_fd();
        for k in 0..10u8 {
            batch.push(fd, to_b, &frame(k, 1000));
        }
        batch.flush(fd);
        let got = received(&b, 10);
        for k in 0..10u8 {
            assert_eq!(got[k as usize], frame(k, 1000));
        }
        assert_eq!(batch.stats().calls, 1);
        assert_eq!(batch.stats().datagrams, 10);
    }

    #[test]
    fn a_batch_larger_than_its_buffer_is_flushed_in_parts_and_nothing_is_lost() {
        let (a, b) = pair();
        let to_b = b.local_addr().unwrap();
        let mut batch = SendBatch::new(false);
        let fd = a.as_raw_fd();
        let n = MAX_MSGS + 10;
        for k in 0..n {
            batch.push(fd, to_b, &frame(k as u8, 100));
        }
        batch.flush(fd);
        let got = received(&b, n);
        for (k, d) in got.iter().enumerate() {
            assert_eq!(*d, frame(k as u8, 100), "datagram {k}");
        }
        assert_eq!(batch.stats().calls, 2);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn recv_batch_skips_truncated_datagrams() {
        let (a, b) = pair();
        let to_b = b.local_addr().unwrap();
        a.send_to(&frame(1, RECV_SLOT + 1), to_b).unwrap();
        a.send_to(&frame(2, 300), to_b).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let mut r = RecvBatch::new();
        assert_eq!(r.recv(b.as_raw_fd()).expect("datagrams waiting"), 2);
        assert_eq!(r.get(0), None, "longer than a slot: dropped");
        let (d, from) = r.get(1).expect("datagram");
        assert_eq!(d, frame(2, 300).as_slice());
        assert_eq!(from, a.local_addr().unwrap());
        assert_eq!(r.get(RECV_BATCH), None);
        b.set_nonblocking(true).unwrap();
        let e = r.recv(b.as_raw_fd()).expect_err("nothing waiting");
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
    }
}
