//! Browser-like pacing of a publisher's RTP: a token bucket between str0m and the socket.
//!
//! Chromium does not hand a video frame's packets to the network at once: its pacer sends them at a pacing rate
//! (2.5 × the target bitrate by default), in bursts of at most about 5 ms worth. [`Pacer`] does the same for
//! the synthetic publishers of `switchboard bench sfu`, so that a frame reaches the server spread over a few
//! milliseconds instead of as one burst.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// The longest burst the pacer lets out at once, as time at the pacing rate (a packet larger than that still
/// leaves, on a full bucket).
pub const BURST: Duration = Duration::from_millis(5);

/// A queue of datagrams released by a token bucket: tokens (bytes) accrue at the pacing rate up to [`BURST`]
/// worth; a datagram leaves when there are as many tokens as its size (or a full bucket, if it is larger), and
/// takes them. Datagrams leave in the order they were queued.
#[derive(Debug)]
pub struct Pacer {
    /// Bytes per second.
    rate: f64,
    /// The bucket's size, bytes.
    capacity: f64,
    /// Bytes that may leave at `updated` (negative after a datagram larger than the bucket).
    tokens: f64,
    /// When `tokens` was last brought up to date.
    updated: Instant,
    /// Datagrams (str0m's own buffers, not copied) and their destinations.
    queue: VecDeque<(Vec<u8>, SocketAddr)>,
}

impl Pacer {
    /// A pacer releasing `bits_per_second` (more than 0), with a full bucket at `now`.
    pub fn new(bits_per_second: f64, now: Instant) -> Pacer {
        let rate = bits_per_second / 8.0;
        let capacity = rate * BURST.as_secs_f64();
        Pacer {
            rate,
            capacity,
            tokens: capacity,
            updated: now,
            queue: VecDeque::new(),
        }
    }

    /// Queues `datagram` for `destination`, after the ones already queued.
    pub fn push(&mut self, datagram: Vec<u8>, destination: SocketAddr) {
        self.queue.push_back((datagram, destination));
    }

    /// Takes the next queued datagram if it may leave at `now`.
    pub fn pop(&mut self, now: Instant) -> Option<(Vec<u8>, SocketAddr)> {
        let len = self.queue.front()?.0.len() as f64;
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.capacity);
        self.updated = self.updated.max(now);
        if self.tokens < len.min(self.capacity) {
            return None;
        }
        self.tokens -= len;
        self.queue.pop_front()
    }

    /// When the next queued datagram may leave (at or before the last `pop`'s `now` if it may leave then);
    /// `None` when nothing is queued.
    pub fn next_release(&self) -> Option<Instant> {
        let len = self.queue.front()?.0.len() as f64;
        let missing = len.min(self.capacity) - self.tokens;
        if missing <= 0.0 {
            return Some(self.updated);
        }
        // One microsecond more than the exact time, so that rounding never makes `pop` refuse at that time.
        Some(self.updated + Duration::from_secs_f64(missing / self.rate) + Duration::from_micros(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dest() -> SocketAddr {
        "127.0.0.1:9".parse().unwrap()
    }

    /// Pops every queued datagram as soon as it may leave, returning when each left (ms after `t0`).
    fn release_times(p: &mut Pacer, t0: Instant) -> Vec<f64> {
        let mut times = Vec::new();
        while let Some(t) = p.next_release() {
            p.pop(t).expect("due at its release time");
            times.push(t.duration_since(t0).as_secs_f64() * 1000.0);
        }
        times
    }

    fn assert_near(got: &[f64], want: &[f64]) {
        assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 0.01, "{got:?} vs {want:?}");
        }
    }

    #[test]
    fn a_frame_of_six_packets_is_spread_at_the_pacing_rate() {
        // 2.5 × 1.5 Mbit/s = 468 750 bytes/s: a 5 ms bucket holds 2343.75 bytes, a 1200-byte packet takes 2.56 ms.
        let t0 = Instant::now();
        let mut p = Pacer::new(2.5 * 1_500_000.0, t0);
        assert_eq!(p.next_release(), None);
        for _ in 0..6 {
            p.push(vec![0; 1200], dest());
        }
        assert_eq!(p.next_release(), Some(t0));
        let times = release_times(&mut p, t0);
        // The first leaves at once; the second once the bucket's remaining 1143.75 bytes reach 1200 (0.12 ms);
        // then one every 2.56 ms.
        assert_near(&times, &[0.0, 0.12, 2.68, 5.24, 7.8, 10.36]);
        assert_eq!(p.next_release(), None);
    }

    #[test]
    fn bursts_hold_at_most_five_ms_worth() {
        let t0 = Instant::now();
        let mut p = Pacer::new(2.5 * 1_500_000.0, t0);
        // After a long idle time the bucket is full, not fuller: 2343.75 bytes = four 500-byte packets.
        let t = t0 + Duration::from_secs(10);
        for _ in 0..8 {
            p.push(vec![0; 500], dest());
        }
        let mut now_out = 0;
        while p.pop(t).is_some() {
            now_out += 1;
        }
        assert_eq!(now_out, 4);
        // The rest follow one every 500 / 468 750 s (1.07 ms), the first once the 156.25 bytes it lacks have
        // accrued (0.33 ms).
        let times = release_times(&mut p, t);
        assert_near(&times, &[0.333, 1.4, 2.467, 3.533]);
    }

    #[test]
    fn a_packet_larger_than_the_bucket_leaves_on_a_full_bucket_and_the_rate_holds() {
        // 8 kbit/s: the bucket holds 5 bytes.
        let t0 = Instant::now();
        let mut p = Pacer::new(8_000.0, t0);
        p.push(vec![0; 1000], dest());
        p.push(vec![0; 1000], dest());
        let times = release_times(&mut p, t0);
        // The first leaves at once, 995 bytes in debt; the second once that is paid back and the bucket full
        // again: 1 s, the rate of 1000 bytes/s.
        assert_near(&times, &[0.0, 1000.0]);
    }

    #[test]
    fn order_and_destinations_are_kept() {
        let t0 = Instant::now();
        let mut p = Pacer::new(1e9, t0);
        let other: SocketAddr = "127.0.0.1:10".parse().unwrap();
        p.push(vec![1], dest());
        p.push(vec![2], other);
        assert_eq!(p.pop(t0), Some((vec![1], dest())));
        assert_eq!(p.pop(t0), Some((vec![2], other)));
        assert_eq!(p.pop(t0), None);
    }
}
