//! The server reports Prometheus-style metrics through the `metrics` facade.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use turn::client::TurnClient;
use turn::{TurnConfig, TurnServer};

#[derive(Default)]
struct TestRecorder {
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
    fn counter(&self, k: &str) -> u64 {
        let m = self.values.lock().unwrap_or_else(|e| e.into_inner());
        m.get(k).map(|v| v.load(Ordering::Relaxed)).unwrap_or(0)
    }
    fn gauge(&self, k: &str) -> f64 {
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

static RECORDER: OnceLock<&'static TestRecorder> = OnceLock::new();

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_reported() {
    let rec: &'static TestRecorder = RECORDER.get_or_init(|| Box::leak(Box::default()));
    metrics::set_global_recorder(rec)
        .map_err(|_| "recorder already set")
        .expect("recorder");
    let cfg = TurnConfig {
        listening_ip: vec!["127.0.0.1".parse().expect("ip")],
        listening_port: 0,
        realm: "test".into(),
        user: vec!["alice:secret".into()],
        allowed_peer_ip: vec!["127.0.0.1".into()],
        relay_threads: 1,
        ..TurnConfig::default()
    };
    let s = TurnServer::start(cfg).await.expect("start");
    let addr = s.udp_addrs()[0];
    let mut a = TurnClient::new(addr, "alice", "secret").await.expect("a");
    let mut b = TurnClient::new(addr, "alice", "secret").await.expect("b");
    let ra = a.allocate().await.expect("a");
    let rb = b.allocate().await.expect("b");
    assert_eq!(rec.gauge("turn_allocations_active{}"), 2.0);
    a.create_permission(rb).await.expect("perm");
    b.create_permission(ra).await.expect("perm");
    a.send_to(&[7u8; 100], rb).await.expect("send");
    let mut buf = [0u8; 200];
    b.recv_from(&mut buf, Duration::from_secs(2))
        .await
        .expect("recv");
    assert_eq!(
        rec.counter("turn_relayed_bytes_total{direction=client_to_peer}"),
        100
    );
    assert_eq!(
        rec.counter("turn_relayed_bytes_total{direction=peer_to_client}"),
        100
    );
    // Data to a peer without permission is dropped and counted.
    a.send_to(&[1u8; 10], "127.0.0.2:9".parse().expect("addr"))
        .await
        .expect("send");
    let mut bad = TurnClient::new(addr, "alice", "wrong").await.expect("bad");
    assert!(bad.allocate().await.is_err());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        rec.counter("turn_dropped_packets_total{reason=no_permission}"),
        1
    );
    assert_eq!(
        rec.counter("turn_auth_failures_total{reason=bad_integrity}"),
        1
    );
    a.refresh(0).await.expect("delete");
    assert_eq!(rec.gauge("turn_allocations_active{}"), 1.0);
    s.shutdown().await;
}
