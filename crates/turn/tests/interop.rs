//! Cross-process interop: coturn's `turnutils_uclient` / `turnutils_stunclient` against our server,
//! and our client against coturn's `turnserver`. Requires coturn (`apt-get install coturn`); set
//! SWITCHBOARD_SKIP_COTURN=1 to skip when it is not installed.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, SystemTime};

mod common;
use common::{assert_clean, have, uclient_pairs};
use tokio::process::Command;
use turn::client::TurnClient;
use turn::{rest_credentials, TurnConfig, TurnServer};

fn config() -> TurnConfig {
    TurnConfig {
        static_auth_secret: Some("restsecret".into()),
        ..common::loopback_config(2)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uclient_udp_static_user() {
    if !have("turnutils_uclient") {
        return;
    }
    let s = TurnServer::start(config()).await.expect("start");
    let port = s.udp_addrs()[0].port().to_string();
    let r = uclient_pairs(
        &port,
        5,
        100,
        120,
        &["-c"],
        &["-u", "alice", "-w", "secret"],
    )
    .await;
    println!("{}", r.output);
    assert_clean(&r, 500);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uclient_tcp_static_user() {
    if !have("turnutils_uclient") {
        return;
    }
    let s = TurnServer::start(config()).await.expect("start");
    let port = s.tcp_addrs()[0].port().to_string();
    let r = uclient_pairs(
        &port,
        5,
        100,
        120,
        &["-t", "-c"],
        &["-u", "alice", "-w", "secret"],
    )
    .await;
    assert_clean(&r, 500);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uclient_udp_rest_secret_and_send_indications() {
    if !have("turnutils_uclient") {
        return;
    }
    let s = TurnServer::start(config()).await.expect("start");
    let port = s.udp_addrs()[0].port().to_string();
    // -W: REST credentials minted by uclient from the shared secret; -s: Send/Data indications.
    let r = uclient_pairs(
        &port,
        2,
        50,
        200,
        &["-c", "-s"],
        &["-u", "carol", "-W", "restsecret"],
    )
    .await;
    assert_clean(&r, 100);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uclient_wrong_secret_is_refused() {
    if !have("turnutils_uclient") {
        return;
    }
    let s = TurnServer::start(config()).await.expect("start");
    let port = s.udp_addrs()[0].port().to_string();
    let r = uclient_pairs(
        &port,
        1,
        10,
        100,
        &["-c"],
        &["-u", "carol", "-W", "not-the-secret"],
    )
    .await;
    assert_eq!(r.received, 0, "{}", r.output);
    assert_eq!(s.allocation_count(), 0);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stunclient_gets_mapped_address() {
    if !have("turnutils_stunclient") {
        return;
    }
    let s = TurnServer::start(config()).await.expect("start");
    let port = s.udp_addrs()[0].port().to_string();
    let out = Command::new("turnutils_stunclient")
        .args(["-p", &port, "-L", "127.0.0.1", "127.0.0.1"])
        .output()
        .await
        .expect("run stunclient");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let line = text
        .lines()
        .find(|l| l.contains("UDP reflexive addr"))
        .unwrap_or_else(|| panic!("no reflexive addr:\n{text}"));
    let addr: SocketAddr = line
        .rsplit(' ')
        .next()
        .expect("addr")
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("{line}"));
    assert_eq!(addr.ip().to_string(), "127.0.0.1", "{text}");
    assert_ne!(addr.port(), 0);
    s.shutdown().await;
}

/// Start coturn on a free loopback port; returns the child and its port.
async fn start_coturn() -> (tokio::process::Child, u16) {
    let probe = std::net::UdpSocket::bind("127.0.0.1:0").expect("probe");
    let port = probe.local_addr().expect("addr").port();
    drop(probe);
    let child = Command::new("turnserver")
        .args([
            "-n",
            "--no-cli",
            "--allow-loopback-peers",
            "--user",
            "alice:secret",
            "--realm",
            "test",
            "--lt-cred-mech",
            "--listening-ip",
            "127.0.0.1",
            "--relay-ip",
            "127.0.0.1",
            "--listening-port",
            &port.to_string(),
            "--no-tls",
            "--no-dtls",
            "--min-port",
            "40000",
            "--max-port",
            "40999",
            "--no-stdout-log",
            "--log-file",
            "stdout",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn turnserver");
    // Wait until it answers a Binding request.
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut c = TurnClient::new(SocketAddr::from(([127, 0, 0, 1], port)), "x", "y")
            .await
            .expect("c");
        c.request_timeout = Duration::from_millis(300);
        if c.binding().await.is_ok() {
            return (child, port);
        }
    }
    panic!("turnserver did not come up");
}

/// Exercise the client against a server: allocate (401 retry), permissions, Send, channels, refresh.
async fn client_scenario(server: SocketAddr, user: &str, pass: &str, ours: bool) {
    let mut a = TurnClient::new(server, user, pass).await.expect("a");
    let mut b = TurnClient::new(server, user, pass).await.expect("b");
    let ra = a.allocate().await.expect("allocate a");
    let rb = b.allocate().await.expect("allocate b");
    assert_eq!(a.mapped_addr(), Some(a.local_addr().expect("local")));
    a.create_permission(rb).await.expect("perm a");
    b.create_permission(ra).await.expect("perm b");
    let mut buf = [0u8; 1500];
    a.send_to(b"via send indication", rb).await.expect("send");
    let (n, from) = b
        .recv_from(&mut buf, Duration::from_secs(2))
        .await
        .expect("recv");
    assert_eq!((&buf[..n], from), (&b"via send indication"[..], ra));
    a.channel_bind(rb).await.expect("bind a");
    b.channel_bind(ra).await.expect("bind b");
    for i in 0..20u8 {
        let payload = [i; 100];
        a.send_to(&payload, rb).await.expect("send");
        let (n, from) = b
            .recv_from(&mut buf, Duration::from_secs(2))
            .await
            .expect("recv");
        assert_eq!((&buf[..n], from), (&payload[..], ra));
        b.send_to(&payload[..50], ra).await.expect("send back");
        let (n, from) = a
            .recv_from(&mut buf, Duration::from_secs(2))
            .await
            .expect("recv back");
        assert_eq!((&buf[..n], from), (&payload[..50], rb));
    }
    assert!(a.refresh(600).await.expect("refresh") > 0);
    assert_eq!(a.refresh(0).await.expect("delete"), 0);
    if ours {
        // coturn keeps a deleted session around briefly and still answers Refresh; we answer 437.
        assert_eq!(a.refresh(600).await.expect_err("gone").code(), Some(437));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_client_against_our_server() {
    let s = TurnServer::start(config()).await.expect("start");
    client_scenario(s.udp_addrs()[0], "alice", "secret", true).await;
    let (u, p) = rest_credentials(
        "restsecret",
        "dave",
        Duration::from_secs(300),
        SystemTime::now(),
    );
    client_scenario(s.udp_addrs()[0], &u, &p, true).await;
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_client_against_coturn() {
    if !have("turnserver") {
        return;
    }
    let (mut child, port) = start_coturn().await;
    client_scenario(
        SocketAddr::from(([127, 0, 0, 1], port)),
        "alice",
        "secret",
        false,
    )
    .await;
    let mut bad = TurnClient::new(SocketAddr::from(([127, 0, 0, 1], port)), "alice", "nope")
        .await
        .expect("c");
    assert_eq!(
        bad.allocate().await.expect_err("wrong password").code(),
        Some(401)
    );
    let _ = child.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uclient_udp_with_rtcp_pairs_uses_even_port_reservations() {
    if !have("turnutils_uclient") {
        return;
    }
    let s = TurnServer::start(config()).await.expect("start");
    let port = s.udp_addrs()[0].port().to_string();
    // Without -c uclient allocates RTP/RTCP relay pairs (EVEN-PORT R=1, then RESERVATION-TOKEN).
    let r = uclient_pairs(&port, 2, 30, 100, &[], &["-u", "alice", "-w", "secret"]).await;
    assert_clean(&r, 60);
    s.shutdown().await;
}
