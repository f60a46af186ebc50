//! Statistics of `switchboard bench turn`: the message payload, a fixed-size latency histogram and the
//! server CPU time read from `/proc/<pid>/stat`. Nothing here allocates per message.

/// First bytes of every benchmark payload ("SBBT"), so stray datagrams are not counted.
pub const MAGIC: u32 = 0x5342_4254;
/// Bytes of the payload header: magic, sender index, sequence number, send time.
pub const PAYLOAD_HEADER: usize = 4 + 4 + 8 + 8;

/// Header carried at the start of every benchmark message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Index of the sending endpoint (allocation) within its thread.
    pub sender: u32,
    /// Per-sender sequence number, from 0.
    pub seq: u64,
    /// Send time in nanoseconds since the start of the data phase.
    pub sent_ns: u64,
}

impl Stamp {
    /// Write the stamp into the first [`PAYLOAD_HEADER`] bytes of `buf` (which must be that long).
    pub fn write(&self, buf: &mut [u8]) {
        buf[0..4].copy_from_slice(&MAGIC.to_be_bytes());
        buf[4..8].copy_from_slice(&self.sender.to_be_bytes());
        buf[8..16].copy_from_slice(&self.seq.to_be_bytes());
        buf[16..24].copy_from_slice(&self.sent_ns.to_be_bytes());
    }

    /// Read a stamp; `None` if `buf` is too short or does not start with [`MAGIC`].
    pub fn read(buf: &[u8]) -> Option<Stamp> {
        let h = buf.get(..PAYLOAD_HEADER)?;
        let be32 = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        let be64 = |b: &[u8]| {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            u64::from_be_bytes(a)
        };
        if be32(&h[0..4]) != MAGIC {
            return None;
        }
        Some(Stamp {
            sender: be32(&h[4..8]),
            seq: be64(&h[8..16]),
            sent_ns: be64(&h[16..24]),
        })
    }
}

/// Sub-buckets per power of two: relative error of a reported percentile is below 1/32.
const SUB_BITS: u32 = 5;
const SUB: u64 = 1 << SUB_BITS;
/// Values below `2 * SUB` get one bucket each.
const LINEAR: u64 = 2 * SUB;
const BUCKETS: usize = (LINEAR + (63 - SUB_BITS as u64) * SUB) as usize;

/// A log-linear histogram of nanosecond values with a fixed number of buckets (no allocation after
/// construction, mergeable across threads).
#[derive(Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    sum: u128,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl Histogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Histogram {
            counts: vec![0; BUCKETS],
            total: 0,
            sum: 0,
            max: 0,
        }
    }

    fn bucket(v: u64) -> usize {
        if v < LINEAR {
            return v as usize;
        }
        let exp = 63 - v.leading_zeros(); // >= SUB_BITS + 1
        let sub = (v >> (exp - SUB_BITS)) & (SUB - 1);
        (LINEAR + u64::from(exp - SUB_BITS - 1) * SUB + sub) as usize
    }

    /// Lowest value of bucket `i` and its width.
    fn bounds(i: usize) -> (u64, u64) {
        let i = i as u64;
        if i < LINEAR {
            return (i, 1);
        }
        let exp = (i - LINEAR) / SUB + u64::from(SUB_BITS) + 1;
        let sub = (i - LINEAR) % SUB;
        let width = 1u64 << (exp - u64::from(SUB_BITS));
        ((1u64 << exp) + sub * width, width)
    }

    /// Count one value.
    pub fn record(&mut self, v: u64) {
        let i = Self::bucket(v).min(self.counts.len() - 1);
        self.counts[i] += 1;
        self.total += 1;
        self.sum += u128::from(v);
        self.max = self.max.max(v);
    }

    /// Add every count of `other`.
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.sum += other.sum;
        self.max = self.max.max(other.max);
    }

    /// Number of values recorded.
    #[cfg(test)]
    pub fn count(&self) -> u64 {
        self.total
    }

    /// Largest value recorded.
    pub fn max(&self) -> u64 {
        self.max
    }

    /// Mean of the values recorded (0 when empty).
    pub fn mean(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.sum as f64 / self.total as f64
        }
    }

    /// The value below which a fraction `q` (0..=1) of the recorded values fall (bucket midpoint,
    /// never above the maximum); 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        if q >= 1.0 {
            return self.max;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let (lo, width) = Self::bounds(i);
                return (lo + width / 2).min(self.max);
            }
        }
        self.max
    }
}

/// CPU time (user + system, all threads) used so far by process `pid`, from `/proc/<pid>/stat`.
pub fn process_cpu_secs(pid: u32) -> std::io::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_cpu_ticks(&stat)
        .map(|ticks| ticks as f64 / clock_ticks_per_sec())
        .ok_or_else(|| std::io::Error::other(format!("cannot parse /proc/{pid}/stat")))
}

/// utime + stime (clock ticks) from the text of `/proc/<pid>/stat`. The command name (field 2) may
/// contain spaces and parentheses, so fields are counted after its last `)`.
pub fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // After the name: field 3 (state) is the first; utime and stime are fields 14 and 15.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

fn clock_ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_round_trips_and_rejects_foreign_payloads() {
        let s = Stamp {
            sender: 7,
            seq: 123_456_789_012,
            sent_ns: 42,
        };
        let mut buf = [0u8; 64];
        s.write(&mut buf);
        assert_eq!(Stamp::read(&buf), Some(s));
        assert_eq!(Stamp::read(&buf[..PAYLOAD_HEADER - 1]), None);
        buf[0] ^= 1;
        assert_eq!(Stamp::read(&buf), None);
    }

    #[test]
    fn histogram_buckets_are_contiguous_and_cover_u64() {
        let mut expected_lo = 0u64;
        for i in 0..BUCKETS {
            let (lo, width) = Histogram::bounds(i);
            assert_eq!(lo, expected_lo, "bucket {i}");
            assert_eq!(Histogram::bucket(lo), i);
            assert_eq!(Histogram::bucket(lo + (width - 1)), i);
            expected_lo = lo.wrapping_add(width);
        }
        assert_eq!(expected_lo, 0, "the last bucket ends at u64::MAX");
        assert_eq!(Histogram::bucket(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn histogram_quantiles_within_relative_error() {
        let mut h = Histogram::new();
        for v in 1..=100_000u64 {
            h.record(v * 1000); // 1 µs .. 100 ms
        }
        assert_eq!(h.count(), 100_000);
        for (q, exact) in [
            (0.5, 50_000_000f64),
            (0.99, 99_000_000f64),
            (0.01, 1_000_000f64),
        ] {
            let got = h.quantile(q) as f64;
            assert!(
                (got - exact).abs() / exact < 1.0 / 32.0,
                "q={q}: {got} vs {exact}"
            );
        }
        assert_eq!(h.max(), 100_000_000);
        assert!((h.mean() - 50_000_500.0).abs() < 1.0);
        assert_eq!(h.quantile(1.0), 100_000_000);
    }

    #[test]
    fn histogram_merge_and_empty() {
        let empty = Histogram::new();
        assert_eq!(empty.quantile(0.5), 0);
        assert_eq!(empty.mean(), 0.0);
        let mut a = Histogram::new();
        let mut b = Histogram::new();
        a.record(10);
        b.record(30);
        b.record(30);
        a.merge(&b);
        assert_eq!(a.count(), 3);
        assert_eq!(a.quantile(0.5), 30);
        assert_eq!(a.quantile(0.1), 10);
        assert_eq!(a.max(), 30);
    }

    #[test]
    fn cpu_ticks_parsed_after_command_name_with_spaces() {
        let stat = "1234 (my (odd) proc) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 \
                    100 1000000 200 18446744073709551615";
        assert_eq!(parse_cpu_ticks(stat), Some(300));
        assert_eq!(parse_cpu_ticks("garbage"), None);
        let me = process_cpu_secs(std::process::id()).expect("own stat");
        assert!(me >= 0.0);
    }
}
