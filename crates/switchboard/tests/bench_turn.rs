//! Cross-process tests of `switchboard bench turn` against a real `switchboard turn` process on loopback.

use std::process::{Command, Output};

use serde_json::Value;

mod common;
use common::{bin, start, Server};

/// Starts `switchboard turn` on a free port; waits for its `listening turn-udp` line.
fn turn_server(auth: &[&str]) -> Server {
    let mut args = vec![
        "turn",
        "--listening-ip",
        "127.0.0.1",
        "--listening-port",
        "0",
        "--relay-ip",
        "127.0.0.1",
        "--realm",
        "bench",
        "--allowed-peer-ip",
        "127.0.0.1",
        "--min-port",
        "40000",
        "--max-port",
        "60000",
        "--relay-threads",
        "2",
    ];
    args.extend_from_slice(auth);
    start(&args, &[], "turn-udp")
}

fn bench(args: &[&str]) -> Output {
    Command::new(bin())
        .arg("bench")
        .arg("turn")
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run switchboard bench turn")
}

fn json_of(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "bench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON object on stdout")
}

#[test]
fn fixed_rate_run_relays_every_message_through_switchboard_turn() {
    let s = turn_server(&["--user", "alice:secret"]);
    let pid = s.child.id().to_string();
    let out = bench(&[
        "--server",
        &s.addr,
        "--user",
        "alice",
        "--password",
        "secret",
        "--allocations",
        "10",
        "--duration",
        "2",
        "--rate",
        "2000",
        "--server-pid",
        &pid,
    ]);
    let j = json_of(&out);
    let sent = j["sent"].as_u64().expect("sent");
    // 2000/s for 2 s; a loaded CI machine may fall a little behind the schedule, never ahead.
    assert!((3000..=4001).contains(&sent), "sent {sent}: {j}");
    assert_eq!(j["received"], j["sent"], "{j}");
    assert_eq!(j["lost"], 0, "{j}");
    assert_eq!(j["foreign"], 0, "{j}");
    assert_eq!(j["mode"], "rate");
    let p50 = j["latency_us"]["p50"].as_f64().expect("p50");
    let p99 = j["latency_us"]["p99"].as_f64().expect("p99");
    assert!(p50 > 0.0 && p99 >= p50, "{j}");
    assert!(j["server_cpu_s"].as_f64().expect("cpu") > 0.0, "{j}");
    assert!(
        j["msgs_per_server_cpu_s"].as_f64().expect("per cpu") > 0.0,
        "{j}"
    );
}

#[test]
fn saturating_run_with_rest_credentials_relays_without_loss() {
    let s = turn_server(&["--static-auth-secret", "bench-secret"]);
    let out = bench(&[
        "--server",
        &s.addr,
        "--static-auth-secret",
        "bench-secret",
        "--allocations",
        "8",
        "--threads",
        "2",
        "--duration",
        "1",
        "--window",
        "4",
    ]);
    let j = json_of(&out);
    assert_eq!(j["mode"], "saturate");
    assert!(j["received"].as_u64().expect("received") > 1000, "{j}");
    assert_eq!(j["lost"], 0, "{j}");
    assert!(
        j["server_cpu_s"].is_null(),
        "no --server-pid, no CPU figure"
    );
}

#[test]
fn wrong_password_fails_with_the_servers_refusal() {
    let s = turn_server(&["--user", "alice:secret"]);
    let out = bench(&[
        "--server",
        &s.addr,
        "--password",
        "wrong",
        "--allocations",
        "2",
        "--duration",
        "1",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("401"), "{err}");
    assert!(out.stdout.is_empty());
}

#[test]
fn non_loopback_server_is_refused_without_allow_remote() {
    let out = bench(&["--server", "192.0.2.1:3478", "--password", "x"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--allow-remote"), "{err}");
}
