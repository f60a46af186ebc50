//! The server reports Prometheus-style metrics through the `metrics` facade.

use std::time::Duration;

use turn::client::TurnClient;
use turn::TurnServer;

mod common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_reported() {
    let rec = common::recorder();
    let s = TurnServer::start(common::loopback_config(1))
        .await
        .expect("start");
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
