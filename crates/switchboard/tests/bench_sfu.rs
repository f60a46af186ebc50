//! `switchboard bench sfu` against a real `switchboard serve` (debug build, loopback, free ports, `sfu` rooms):
//! one publisher and several subscribers for three seconds; every subscriber must get the publisher's frames.

use std::io::{Read, Write};
use std::process::Command;

mod common;
use common::{bin, serve, Server};

/// Runs the benchmark against `server` with `subscribers` subscribers of one stream of `bitrate` bit/s; its
/// JSON report.
fn run_bench(server: &Server, subscribers: u32, bitrate: u32) -> serde_json::Value {
    let pid = server.child.id().to_string();
    let out = Command::new(bin())
        .args(["bench", "sfu", "--url", &server.addr, "--duration", "3"])
        .args(["--subscribers", &subscribers.to_string()])
        .args(["--bitrate", &bitrate.to_string()])
        .args(["--setup-timeout", "40", "--server-pid", &pid])
        .env("RUST_LOG", "warn")
        .output()
        .expect("run switchboard bench sfu");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).expect("one JSON object")
}

/// Every subscriber got (nearly) every frame the publisher sent; returns the frames received.
fn assert_no_frame_loss(v: &serde_json::Value, subscribers: u64) -> u64 {
    let sent = v["frames_sent"].as_u64().unwrap();
    // 3 s at 30 fps is 90; a busy machine (shared CI) may skip ticks of the publisher, not lose frames.
    assert!(sent >= 30, "the publisher sent {sent} frames in 3 s: {v}");
    let expected = v["frames_expected"].as_u64().unwrap();
    assert_eq!(expected, subscribers * sent);
    let got = v["frames_received"].as_u64().unwrap();
    assert!(
        got * 100 >= expected * 98,
        "subscribers got {got} of {expected} frames: {v}"
    );
    got
}

/// The value of one unlabelled counter in the server's `/metrics` text (0 when absent).
fn metric(addr: &str, name: &str) -> f64 {
    let host = addr.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(host).expect("connect to /metrics");
    write!(s, "GET /metrics HTTP/1.0\r\nHost: {host}\r\n\r\n").expect("write");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read /metrics");
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn bench_sfu_one_publisher_reaches_three_subscribers_without_loss() {
    let server = serve(&[("SWITCHBOARD_ROOMS_DEFAULT_MODE", "sfu")], &[]);
    let v = run_bench(&server, 3, 1_500_000);
    for field in [
        "packets_sent",
        "packets_received",
        "frame_loss_pct",
        "forwarded_pps",
        "forwarded_pkts_per_cpu_s",
        "latency_p50_ms",
        "latency_p99_ms",
        "server_cpu_pct",
        "rss_per_subscriber_bytes",
    ] {
        assert!(!v[field].is_null(), "{field} missing in {v}");
    }
    assert_eq!(v["target"], "switchboard");
    assert_eq!(
        v["connected"], 4,
        "publisher and 3 subscribers connected: {v}"
    );
    let got = assert_no_frame_loss(&v, 3);
    assert!(
        v["packets_received"].as_u64().unwrap() >= 5 * got,
        "1.5 Mbit/s frames span several packets: {v}"
    );
    assert!(v["forwarded_pps"].as_f64().unwrap() > 100.0, "{v}");
}

/// 40 subscribers: more than the 32 polled at once that make the SFU split a fan-out over two threads.
#[test]
fn bench_sfu_forty_subscribers_are_served_by_the_parallel_fan_out_without_loss() {
    let server = serve(
        &[
            ("SWITCHBOARD_ROOMS_DEFAULT_MODE", "sfu"),
            ("SWITCHBOARD_ROOMS_MAX_PARTICIPANTS", "64"),
        ],
        &[],
    );
    let v = run_bench(&server, 40, 300_000);
    assert_eq!(v["connected"], 41, "{v}");
    assert_no_frame_loss(&v, 40);
    let parallel = metric(&server.addr, "sfu_parallel_polls_total");
    if std::thread::available_parallelism().is_ok_and(|n| n.get() > 1) {
        assert!(
            parallel > 0.0,
            "the fan-out was polled on two threads ({parallel} times)"
        );
    }
}
