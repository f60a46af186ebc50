//! Shared by the cross-process TURN tests: coturn's tools and their reports.

#![allow(dead_code)] // each test file uses part of it

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use tokio::process::Command;
use turn::TurnConfig;

/// A server on 127.0.0.1 (ports picked by the system) with realm `test`, user `alice:secret`, relaying to
/// loopback peers, with `relay_threads` workers; tests change the rest with `TurnConfig { .., ..this }`.
pub fn loopback_config(relay_threads: usize) -> TurnConfig {
    TurnConfig {
        listening_ip: vec!["127.0.0.1".parse().expect("ip")],
        listening_port: 0,
        realm: "test".into(),
        user: vec!["alice:secret".into()],
        allowed_peer_ip: vec!["127.0.0.1".into()],
        relay_threads,
        ..TurnConfig::default()
    }
}

/// Counters and gauges by name and labels, read as `name{k=v,...}` (labels sorted; `name{}` without any).
#[derive(Default)]
pub struct TestRecorder {
    values: Mutex<HashMap<String, Arc<AtomicU64>>>,
}

fn key_string(key: &Key) -> String {
    let mut labels: Vec<String> = key
        .labels()
        .map(|l| format!("{}={}", l.key(), l.value()))
        .collect();
    labels.sort();
    format!("{}{{{}}}", key.name(), labels.join(","))
}

impl TestRecorder {
    fn slot(&self, key: &Key) -> Arc<AtomicU64> {
        let mut m = self.values.lock().unwrap_or_else(|e| e.into_inner());
        m.entry(key_string(key)).or_default().clone()
    }
    /// A counter's value (0 if never registered).
    pub fn counter(&self, k: &str) -> u64 {
        let m = self.values.lock().unwrap_or_else(|e| e.into_inner());
        m.get(k).map(|v| v.load(Ordering::Relaxed)).unwrap_or(0)
    }
    /// A gauge's value (-1 if never registered).
    pub fn gauge(&self, k: &str) -> f64 {
        let m = self.values.lock().unwrap_or_else(|e| e.into_inner());
        m.get(k)
            .map(|v| f64::from_bits(v.load(Ordering::Relaxed)))
            .unwrap_or(-1.0)
    }
}

impl Recorder for &'static TestRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(self.slot(key))
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(self.slot(key))
    }
    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

/// This test binary's global metrics recorder, installed on first use.
pub fn recorder() -> &'static TestRecorder {
    static RECORDER: OnceLock<&'static TestRecorder> = OnceLock::new();
    RECORDER.get_or_init(|| {
        let r: &'static TestRecorder = Box::leak(Box::default());
        metrics::set_global_recorder(r).expect("no other recorder in this test binary");
        r
    })
}

/// Whether coturn's `tool` is installed; without it the test fails unless SWITCHBOARD_SKIP_COTURN is set.
pub fn have(tool: &str) -> bool {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    if !found && std::env::var_os("SWITCHBOARD_SKIP_COTURN").is_none() {
        panic!("{tool} not found: install coturn or set SWITCHBOARD_SKIP_COTURN=1");
    }
    found
}

/// Totals parsed from turnutils_uclient's final report.
#[derive(Debug, Default)]
pub struct Report {
    pub sent: u64,
    pub received: u64,
    pub lost: u64,
    pub output: String,
}

fn field(line: &str, key: &str) -> Option<u64> {
    let i = line.find(key)?;
    line[i + key.len()..]
        .trim_start_matches([' ', ':', '='])
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// Runs `turnutils_uclient ARGS` (60 s at most) and parses its totals.
pub async fn uclient(args: &[&str]) -> Report {
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        Command::new("turnutils_uclient")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output(),
    )
    .await
    .expect("uclient timed out")
    .expect("run uclient");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut r = Report {
        output: text.clone(),
        ..Report::default()
    };
    for line in text.lines() {
        if line.contains("Total transmit time")
            || line.contains("tot_send_msgs")
            || line.contains("Total lost packets")
        {
            if let Some(v) = field(line, "tot_send_msgs") {
                r.sent = v;
            }
            if let Some(v) = field(line, "tot_recv_msgs") {
                r.received = v;
            }
            if let Some(v) = field(line, "Total lost packets") {
                r.lost = v;
            }
        }
    }
    r
}

/// `turnutils_uclient` in paired mode (`-y`: every client relays to another client's relayed address on the
/// same server) against 127.0.0.1:`port`: `clients` clients (`-m`) each sending `msgs` messages (`-n`) of `len`
/// bytes (`-l`), with coturn's `flags` (`-c` no RTCP allocation, `-s` Send indications instead of channels, `-t`
/// TCP, `-S` TLS) and `auth` (`["-u", user, "-w", password]`, or `-W` with a REST secret).
pub async fn uclient_pairs(
    port: &str,
    clients: u32,
    msgs: u32,
    len: u32,
    flags: &[&str],
    auth: &[&str],
) -> Report {
    let (m, n, l) = (clients.to_string(), msgs.to_string(), len.to_string());
    let mut args: Vec<&str> = flags.to_vec();
    args.extend(["-y", "-n", &n, "-m", &m, "-l", &l, "-p", port]);
    args.extend_from_slice(auth);
    args.push("127.0.0.1");
    uclient(&args).await
}

/// At least `expect_msgs` sent, all received, none lost.
pub fn assert_clean(r: &Report, expect_msgs: u64) {
    assert!(r.sent >= expect_msgs, "too few sent: {r:?}\n{}", r.output);
    assert_eq!(r.received, r.sent, "received != sent\n{}", r.output);
    assert_eq!(r.lost, 0, "lost packets\n{}", r.output);
}
