//! Counters of one bench participant, their sum, latency percentiles, and a process's CPU time and RSS read
//! from `/proc`.

use anyhow::Context;

/// What one participant saw during the measurement window (frames stamped inside it).
#[derive(Debug, Default, Clone)]
pub struct PeerReport {
    /// Video/audio frames this publisher sent.
    pub frames_sent: u64,
    /// RTP packets this publisher sent.
    pub packets_sent: u64,
    /// Frames received (all publishers).
    pub frames_received: u64,
    /// RTP packets those frames were made of.
    pub packets_received: u64,
    /// One-way latency of every received frame, microseconds.
    pub latencies_us: Vec<u32>,
    /// Keyframe requests (PLI/FIR) received by this publisher.
    pub keyframe_requests: u64,
    /// Whether ICE+DTLS came up.
    pub connected: bool,
}

impl PeerReport {
    /// Adds another participant's counts into this one.
    pub fn add(&mut self, o: &PeerReport) {
        self.frames_sent += o.frames_sent;
        self.packets_sent += o.packets_sent;
        self.frames_received += o.frames_received;
        self.packets_received += o.packets_received;
        self.latencies_us.extend_from_slice(&o.latencies_us);
        self.keyframe_requests += o.keyframe_requests;
    }
}

/// The `p`-th percentile (0..=100) of sorted samples, nearest rank; `None` when empty.
pub fn percentile(sorted: &[u32], p: f64) -> Option<u32> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Linux's USER_HZ: `/proc/<pid>/stat` times are in 1/100 s on every architecture we run on.
const CLOCK_TICKS: f64 = 100.0;

/// CPU seconds (user + system) a process has used, from `/proc/<pid>/stat` (its threads included).
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let s = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_stat_cpu(&s).with_context(|| format!("parsing {path}"))
}

/// utime + stime (fields 14 and 15) of a `/proc/<pid>/stat` line, in seconds.
pub fn parse_stat_cpu(stat: &str) -> anyhow::Result<f64> {
    // The command name (field 2) is in parentheses and may contain spaces: split after the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("no ')' in stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14 → index 11.
    let utime: u64 = f.get(11).context("short stat")?.parse()?;
    let stime: u64 = f.get(12).context("short stat")?.parse()?;
    Ok((utime + stime) as f64 / CLOCK_TICKS)
}

/// Seconds the threads of a process have spent runnable but waiting for a CPU (the second field of
/// `/proc/<pid>/task/<tid>/schedstat`, summed over the threads alive now). On a busy machine this shows a
/// server starved by the scheduler rather than slow.
pub fn runqueue_wait_seconds(pid: u32) -> anyhow::Result<f64> {
    let dir = format!("/proc/{pid}/task");
    let mut ns: u64 = 0;
    for t in std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        let path = t?.path().join("schedstat");
        // A thread may exit between listing and reading.
        if let Ok(s) = std::fs::read_to_string(&path) {
            ns += parse_schedstat_wait(&s).unwrap_or(0);
        }
    }
    Ok(ns as f64 / 1e9)
}

/// The run-queue wait (ns) of a `schedstat` line: `<on-cpu ns> <waiting ns> <timeslices>`.
pub fn parse_schedstat_wait(line: &str) -> Option<u64> {
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Resident set size of a process in bytes, from `VmRSS` in `/proc/<pid>/status`.
pub fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let s = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_status_rss(&s).with_context(|| format!("no VmRSS in {path}"))
}

/// `VmRSS:   1234 kB` → bytes.
pub fn parse_status_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), Some(50));
        assert_eq!(percentile(&v, 99.0), Some(99));
        assert_eq!(percentile(&v, 100.0), Some(100));
        assert_eq!(percentile(&v, 0.0), Some(1));
        assert_eq!(percentile(&[7], 99.0), Some(7));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn stat_cpu_skips_a_command_name_with_spaces_and_parens() {
        let line = "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 100 1000 200";
        assert!((parse_stat_cpu(line).unwrap() - 3.0).abs() < 1e-9);
    }

    #[test]
    fn own_process_cpu_and_rss_are_readable() {
        let pid = std::process::id();
        assert!(cpu_seconds(pid).unwrap() >= 0.0);
        assert!(rss_bytes(pid).unwrap() > 1024 * 1024);
    }

    #[test]
    fn schedstat_wait_is_the_second_field() {
        assert_eq!(parse_schedstat_wait("123 456 7\n"), Some(456));
        assert_eq!(parse_schedstat_wait("123"), None);
        assert!(runqueue_wait_seconds(std::process::id()).unwrap() >= 0.0);
    }

    #[test]
    fn status_rss_is_in_bytes() {
        assert_eq!(
            parse_status_rss("Name:\tx\nVmRSS:\t  2048 kB\nVmSwap: 0 kB\n"),
            Some(2048 * 1024)
        );
        assert_eq!(parse_status_rss("Name: x\n"), None);
    }

    #[test]
    fn reports_add_up() {
        let mut a = PeerReport {
            frames_sent: 1,
            packets_sent: 6,
            latencies_us: vec![5],
            ..Default::default()
        };
        let b = PeerReport {
            frames_received: 2,
            packets_received: 12,
            latencies_us: vec![7, 9],
            ..Default::default()
        };
        a.add(&b);
        assert_eq!(
            (
                a.frames_sent,
                a.packets_sent,
                a.frames_received,
                a.packets_received
            ),
            (1, 6, 2, 12)
        );
        assert_eq!(a.latencies_us, vec![5, 7, 9]);
    }
}
