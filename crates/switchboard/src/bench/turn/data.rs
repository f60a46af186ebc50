//! Data plane of `switchboard bench turn`: one OS thread drives a set of allocation pairs over raw
//! non-blocking UDP sockets with `sendmmsg`/`recvmmsg` batches and `ppoll`. Endpoints `2k` and
//! `2k+1` of a thread are partners: each sends ChannelData to the server on the channel bound to the
//! other's relayed address, so every message crosses the server twice (client → relay A → relay B →
//! client). All buffers are allocated before the first message.

use std::io;
use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use super::stats::{Histogram, Stamp, PAYLOAD_HEADER};

/// Datagrams per `sendmmsg`/`recvmmsg` call.
const BATCH: usize = 32;
/// Receive slot size (ChannelData header + the largest payload we send, with room to spare).
const RX_SLOT: usize = 2048;
/// A sender whose partner has received nothing for this long writes its in-flight window off as lost
/// (saturating mode), so one lost datagram never stalls an allocation.
const STALL: Duration = Duration::from_millis(200);

/// What one data thread does.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Messages per second for this thread (0 = as fast as the window allows).
    pub rate: f64,
    /// Most messages in flight per sending endpoint in saturating mode.
    pub window: u64,
    /// ChannelData payload bytes per message (at least [`PAYLOAD_HEADER`]).
    pub size: usize,
    /// How long to send.
    pub duration: Duration,
    /// How long to wait after the last send for messages still in flight.
    pub drain: Duration,
}

/// One client 5-tuple of the data phase.
pub struct Endpoint {
    /// Non-blocking socket connected to the server.
    pub sock: UdpSocket,
    /// Channel bound to the partner's relayed address.
    pub channel: u16,
}

/// What one data thread measured.
#[derive(Clone, Default)]
pub struct ThreadReport {
    pub sent: u64,
    pub received: u64,
    /// One-way latency (client → server → server → client), nanoseconds.
    pub latency: Histogram,
    /// Time of the last benchmark message received, ns since the data phase started.
    pub last_recv_ns: u64,
    /// Datagrams that were not this run's messages for this endpoint.
    pub foreign: u64,
    /// sendmmsg/recvmmsg failures other than "would block".
    pub io_errors: u64,
}

/// Pre-built `mmsghdr`/`iovec` arrays over one contiguous buffer of `BATCH` slots.
struct Batch {
    buf: Vec<u8>,
    slot: usize,
    iov: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
}

impl Batch {
    fn new(slot: usize) -> Batch {
        // SAFETY: iovec and mmsghdr are plain C structs for which all-zero is a valid value.
        let (iov, hdrs) = unsafe {
            (
                vec![std::mem::zeroed::<libc::iovec>(); BATCH],
                vec![std::mem::zeroed::<libc::mmsghdr>(); BATCH],
            )
        };
        Batch {
            buf: vec![0u8; slot * BATCH],
            slot,
            iov,
            hdrs,
        }
    }

    fn slot_mut(&mut self, k: usize) -> &mut [u8] {
        &mut self.buf[k * self.slot..(k + 1) * self.slot]
    }

    /// Point the headers at the first `n` slots, each `len` bytes long.
    fn prepare(&mut self, n: usize, len: usize) {
        let base = self.buf.as_mut_ptr();
        for k in 0..n {
            // SAFETY: k < BATCH, so the slot lies inside `buf`.
            self.iov[k].iov_base = unsafe { base.add(k * self.slot) }.cast();
            self.iov[k].iov_len = len;
            let h = &mut self.hdrs[k].msg_hdr;
            h.msg_name = std::ptr::null_mut();
            h.msg_namelen = 0;
            h.msg_iov = &mut self.iov[k];
            h.msg_iovlen = 1;
            h.msg_control = std::ptr::null_mut();
            h.msg_controllen = 0;
            h.msg_flags = 0;
            self.hdrs[k].msg_len = 0;
        }
    }

    /// Send the first `n` slots (each `len` bytes) on connected socket `fd`; returns how many left.
    fn send(&mut self, fd: i32, n: usize, len: usize) -> io::Result<usize> {
        self.prepare(n, len);
        // SAFETY: the first `n` headers point at live iovecs over `buf`.
        let r = unsafe { libc::sendmmsg(fd, self.hdrs.as_mut_ptr(), n as _, libc::MSG_DONTWAIT) };
        mmsg_count(r)
    }

    /// Receive up to `BATCH` datagrams from `fd` without blocking; returns how many.
    fn recv(&mut self, fd: i32) -> io::Result<usize> {
        self.prepare(BATCH, self.slot);
        // SAFETY: all headers point at live iovecs over `buf`; no timeout pointer.
        let r = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                BATCH as _,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        mmsg_count(r)
    }

    fn received(&self, k: usize) -> &[u8] {
        let len = (self.hdrs[k].msg_len as usize).min(self.slot);
        &self.buf[k * self.slot..k * self.slot + len]
    }
}

fn ns_since(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Run the data phase for `eps` (partners at indexes `2k`, `2k+1`) from `start` on.
pub fn run(eps: &[Endpoint], plan: &Plan, start: Instant) -> ThreadReport {
    let n = eps.len();
    let mut rep = ThreadReport::default();
    if n == 0 {
        return rep;
    }
    let msg_len = 4 + plan.size;
    let mut tx = Batch::new(msg_len);
    let mut rx = Batch::new(RX_SLOT);
    let mut sent = vec![0u64; n];
    let mut recvd = vec![0u64; n]; // received BY endpoint i (sent by i ^ 1)
    let mut written_off = vec![0u64; n];
    let mut last_progress = vec![0u64; n]; // last receive by endpoint i
    let mut fds: Vec<libc::pollfd> = eps
        .iter()
        .map(|e| libc::pollfd {
            fd: e.sock.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // The ChannelData header and the padding never change per endpoint; only the stamp does.
    let dur_ns = u64::try_from(plan.duration.as_nanos()).unwrap_or(u64::MAX);
    let end_ns = dur_ns.saturating_add(u64::try_from(plan.drain.as_nanos()).unwrap_or(0));
    let stall_ns = STALL.as_nanos() as u64;
    let mut rr = 0usize;
    let mut total_sent = 0u64;
    loop {
        let now = ns_since(start);
        let sending = now < dur_ns;
        if !sending {
            let received: u64 = recvd.iter().sum();
            if received >= total_sent || now >= end_ns {
                break;
            }
        }
        let mut wait_ns = 5_000_000u64;
        if sending {
            if plan.rate > 0.0 {
                let due = (now as f64 * plan.rate / 1e9) as u64;
                let mut backlog = due.saturating_sub(total_sent).min((BATCH * n) as u64);
                while backlog > 0 {
                    let i = rr;
                    rr = (rr + 1) % n;
                    let k = backlog.min(BATCH as u64) as usize;
                    let done =
                        send_some(&mut tx, &eps[i], i, sent[i], k, plan.size, start, &mut rep);
                    sent[i] += done as u64;
                    total_sent += done as u64;
                    backlog -= k as u64;
                }
                let next_due = ((total_sent + 1) as f64 * 1e9 / plan.rate) as u64;
                wait_ns = next_due.saturating_sub(ns_since(start)).min(wait_ns);
            } else {
                for i in 0..n {
                    let mut inflight = sent[i] - recvd[i ^ 1] - written_off[i];
                    if inflight >= plan.window
                        && now.saturating_sub(last_progress[i ^ 1]) > stall_ns
                    {
                        written_off[i] += inflight;
                        last_progress[i ^ 1] = now;
                        inflight = 0;
                    }
                    let k = plan.window.saturating_sub(inflight).min(BATCH as u64) as usize;
                    if k > 0 {
                        let done =
                            send_some(&mut tx, &eps[i], i, sent[i], k, plan.size, start, &mut rep);
                        sent[i] += done as u64;
                        total_sent += done as u64;
                    }
                }
            }
        }
        for p in fds.iter_mut() {
            p.revents = 0;
        }
        let ts = libc::timespec {
            tv_sec: (wait_ns / 1_000_000_000) as _,
            tv_nsec: (wait_ns % 1_000_000_000) as _,
        };
        // SAFETY: `fds` is a live array of `n` pollfds; `ts` lives across the call.
        let r = unsafe { libc::ppoll(fds.as_mut_ptr(), n as _, &ts, std::ptr::null()) };
        if r <= 0 {
            continue;
        }
        for i in 0..n {
            if fds[i].revents == 0 {
                continue;
            }
            loop {
                let got = match rx.recv(fds[i].fd) {
                    Ok(g) => g,
                    Err(_) => {
                        rep.io_errors += 1;
                        break;
                    }
                };
                if got == 0 {
                    break;
                }
                let now = ns_since(start);
                for k in 0..got {
                    let d = rx.received(k);
                    let stamp = d.get(4..).and_then(Stamp::read);
                    match stamp {
                        Some(s) if s.sender as usize == i ^ 1 => {
                            recvd[i] += 1;
                            rep.latency.record(now.saturating_sub(s.sent_ns));
                        }
                        _ => rep.foreign += 1,
                    }
                }
                last_progress[i] = now;
                rep.last_recv_ns = now;
                if got < BATCH {
                    break;
                }
            }
        }
    }
    rep.sent = total_sent;
    rep.received = recvd.iter().sum();
    rep
}

/// Build `k` messages from endpoint `i` (sequence numbers from `seq`) and send them; returns how many
/// the kernel took.
#[allow(clippy::too_many_arguments)]
fn send_some(
    tx: &mut Batch,
    ep: &Endpoint,
    i: usize,
    seq: u64,
    k: usize,
    size: usize,
    start: Instant,
    rep: &mut ThreadReport,
) -> usize {
    let now = ns_since(start);
    for j in 0..k {
        let slot = tx.slot_mut(j);
        slot[0..2].copy_from_slice(&ep.channel.to_be_bytes());
        slot[2..4].copy_from_slice(&(size as u16).to_be_bytes());
        Stamp {
            sender: i as u32,
            seq: seq + j as u64,
            sent_ns: now,
        }
        .write(&mut slot[4..4 + PAYLOAD_HEADER]);
    }
    match tx.send(ep.sock.as_raw_fd(), k, 4 + size) {
        Ok(done) => done,
        Err(_) => {
            rep.io_errors += 1;
            0
        }
    }
}

/// The datagram count of a non-blocking `sendmmsg`/`recvmmsg` return value (nothing ready: 0).
fn mmsg_count(r: i32) -> io::Result<usize> {
    if r >= 0 {
        return Ok(r as usize);
    }
    let e = io::Error::last_os_error();
    if e.kind() == io::ErrorKind::WouldBlock {
        Ok(0)
    } else {
        Err(e)
    }
}
