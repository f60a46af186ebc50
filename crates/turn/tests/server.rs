//! Live-socket tests of the TURN server using the crate's own TURN client.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, UdpSocket};
use turn::client::TurnClient;
use turn::{rest_credentials, TurnConfig, TurnServer};

fn config() -> TurnConfig {
    TurnConfig {
        listening_ip: vec!["127.0.0.1".parse().expect("ip")],
        listening_port: 0,
        realm: "test".into(),
        user: vec!["alice:secret".into(), "bob:hunter2".into()],
        static_auth_secret: Some("restsecret".into()),
        relay_threads: 1,
        ..TurnConfig::default()
    }
}

fn allow_loopback(mut c: TurnConfig) -> TurnConfig {
    c.allowed_peer_ip = vec!["127.0.0.1".into()];
    c
}

async fn start(c: TurnConfig) -> (TurnServer, SocketAddr) {
    let s = TurnServer::start(c).await.expect("start");
    let addr = s.udp_addrs()[0];
    (s, addr)
}

#[tokio::test]
async fn binding_and_same_port_for_udp_and_tcp() {
    let (s, addr) = start(config()).await;
    assert_ne!(addr.port(), 0);
    assert_eq!(s.tcp_addrs()[0].port(), addr.port());
    let mut c = TurnClient::new(addr, "x", "y").await.expect("client");
    let mapped = c.binding().await.expect("binding");
    assert_eq!(mapped, c.local_addr().expect("local"));
    s.shutdown().await;
}

#[tokio::test]
async fn relay_between_two_clients_with_send_and_channels() {
    let (s, addr) = start(allow_loopback(config())).await;
    let mut a = TurnClient::new(addr, "alice", "secret").await.expect("a");
    let mut b = TurnClient::new(addr, "bob", "hunter2").await.expect("b");
    let ra = a.allocate().await.expect("alloc a");
    let rb = b.allocate().await.expect("alloc b");
    assert_eq!(ra.ip().to_string(), "127.0.0.1");
    assert_ne!(ra, rb);
    assert_eq!(s.allocation_count(), 2);
    a.create_permission(rb).await.expect("perm a");
    b.create_permission(ra).await.expect("perm b");
    let mut buf = [0u8; 2048];

    // Send indication → Data indication.
    a.send_to(b"hello via send", rb).await.expect("send");
    let (n, from) = b
        .recv_from(&mut buf, Duration::from_secs(2))
        .await
        .expect("recv");
    assert_eq!(&buf[..n], b"hello via send");
    assert_eq!(from, ra);

    // Channels both ways.
    a.channel_bind(rb).await.expect("bind a");
    b.channel_bind(ra).await.expect("bind b");
    for i in 0..50u32 {
        let msg = format!("packet {i}");
        a.send_to(msg.as_bytes(), rb).await.expect("send");
        let (n, from) = b
            .recv_from(&mut buf, Duration::from_secs(2))
            .await
            .expect("recv");
        assert_eq!(&buf[..n], msg.as_bytes());
        assert_eq!(from, ra);
        b.send_to(&buf[..n], ra).await.expect("echo");
        let (n, from) = a
            .recv_from(&mut buf, Duration::from_secs(2))
            .await
            .expect("recv echo");
        assert_eq!(&buf[..n], msg.as_bytes());
        assert_eq!(from, rb);
    }

    // Permissions are per IP: data from another IP (127.0.0.2) is dropped.
    let stranger = UdpSocket::bind("127.0.0.2:0").await.expect("udp");
    stranger.send_to(b"intruder", ra).await.expect("send");
    assert!(a
        .recv_from(&mut buf, Duration::from_millis(300))
        .await
        .is_err());

    // Delete: allocation gone, next refresh is 437.
    assert_eq!(a.refresh(0).await.expect("delete"), 0);
    assert_eq!(s.allocation_count(), 1);
    assert_eq!(
        a.refresh(600).await.expect_err("no allocation").code(),
        Some(437)
    );
    s.shutdown().await;
}

#[tokio::test]
async fn peer_policy_defaults_and_overrides() {
    let (s, addr) = start(config()).await;
    let mut c = TurnClient::new(addr, "alice", "secret").await.expect("c");
    c.allocate().await.expect("alloc");
    for peer in [
        "127.0.0.1:5000",
        "10.0.0.1:5000",
        "192.168.1.1:1",
        "169.254.1.1:1",
        "224.0.0.1:1",
        "0.0.0.0:1",
    ] {
        let err = c
            .create_permission(peer.parse().expect("addr"))
            .await
            .expect_err(peer);
        assert_eq!(err.code(), Some(403), "{peer}");
    }
    c.create_permission("8.8.8.8:53".parse().expect("addr"))
        .await
        .expect("public peer allowed");
    // IPv6 peer on an IPv4 relay: 443.
    let err = c
        .create_permission("[2001:db8::1]:5".parse().expect("addr"))
        .await
        .expect_err("v6");
    assert_eq!(err.code(), Some(443));
    s.shutdown().await;

    let mut cfg = allow_loopback(config());
    cfg.denied_peer_ip = vec!["8.8.8.0/24".into()];
    let (s, addr) = start(cfg).await;
    let mut c = TurnClient::new(addr, "alice", "secret").await.expect("c");
    c.allocate().await.expect("alloc");
    c.create_permission("127.0.0.1:5000".parse().expect("addr"))
        .await
        .expect("allowed by config");
    assert_eq!(
        c.channel_bind("127.0.0.1:5001".parse().expect("addr"))
            .await
            .expect("bind"),
        0x4000
    );
    let err = c
        .create_permission("10.0.0.1:5000".parse().expect("addr"))
        .await
        .expect_err("10/8");
    assert_eq!(err.code(), Some(403));
    let err = c
        .channel_bind("8.8.8.8:53".parse().expect("addr"))
        .await
        .expect_err("denied");
    assert_eq!(err.code(), Some(403));
    s.shutdown().await;
}

#[tokio::test]
async fn user_quota_and_total_quota() {
    let mut cfg = config();
    cfg.user_quota = 1;
    cfg.total_quota = 2;
    let (s, addr) = start(cfg).await;
    let mut a1 = TurnClient::new(addr, "alice", "secret").await.expect("a1");
    let mut a2 = TurnClient::new(addr, "alice", "secret").await.expect("a2");
    let mut b1 = TurnClient::new(addr, "bob", "hunter2").await.expect("b1");
    let (rest_user, rest_pass) = rest_credentials(
        "restsecret",
        "carol",
        Duration::from_secs(60),
        SystemTime::now(),
    );
    let mut c1 = TurnClient::new(addr, &rest_user, &rest_pass)
        .await
        .expect("c1");
    a1.allocate().await.expect("first alloc");
    assert_eq!(
        a2.allocate().await.expect_err("user quota").code(),
        Some(486)
    );
    b1.allocate().await.expect("bob alloc");
    assert_eq!(
        c1.allocate().await.expect_err("total quota").code(),
        Some(486)
    );
    // Freeing one makes room again.
    a1.refresh(0).await.expect("delete");
    a2.allocate().await.expect("alloc after delete");
    s.shutdown().await;
}

#[tokio::test]
async fn credentials_static_rest_and_wrong() {
    let (s, addr) = start(config()).await;
    let mut bad = TurnClient::new(addr, "alice", "wrong").await.expect("c");
    assert_eq!(
        bad.allocate().await.expect_err("bad password").code(),
        Some(401)
    );
    let mut nobody = TurnClient::new(addr, "mallory", "x").await.expect("c");
    assert_eq!(
        nobody.allocate().await.expect_err("unknown user").code(),
        Some(401)
    );
    let (u, p) = rest_credentials(
        "restsecret",
        "carol",
        Duration::from_secs(60),
        SystemTime::now(),
    );
    let mut rest = TurnClient::new(addr, &u, &p).await.expect("c");
    rest.allocate().await.expect("REST credentials");
    let (u, p) = rest_credentials(
        "restsecret",
        "carol",
        Duration::ZERO,
        SystemTime::now() - Duration::from_secs(10),
    );
    let mut expired = TurnClient::new(addr, &u, &p).await.expect("c");
    assert_eq!(
        expired.allocate().await.expect_err("expired").code(),
        Some(401)
    );
    let (u, p) = rest_credentials(
        "othersecret",
        "carol",
        Duration::from_secs(60),
        SystemTime::now(),
    );
    let mut forged = TurnClient::new(addr, &u, &p).await.expect("c");
    assert_eq!(
        forged.allocate().await.expect_err("wrong secret").code(),
        Some(401)
    );
    assert_eq!(s.allocation_count(), 1);
    s.shutdown().await;
}

#[tokio::test]
async fn stale_nonce_is_438_and_client_recovers() {
    let mut cfg = allow_loopback(config());
    cfg.stale_nonce = 1;
    let (s, addr) = start(cfg).await;
    let mut c = TurnClient::new(addr, "alice", "secret").await.expect("c");
    c.allocate().await.expect("alloc");
    assert_eq!(c.stale_nonce_retries(), 0);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    c.create_permission("127.0.0.1:9".parse().expect("addr"))
        .await
        .expect("perm after stale nonce");
    assert_eq!(c.stale_nonce_retries(), 1);
    assert_eq!(c.refresh(700).await.expect("refresh"), 700);
    s.shutdown().await;
}

#[tokio::test]
async fn lifetimes_are_clamped_and_allocations_expire() {
    let (s, addr) = start(config()).await;
    let mut c = TurnClient::new(addr, "alice", "secret").await.expect("c");
    c.allocate().await.expect("alloc");
    assert_eq!(c.refresh(100_000).await.expect("refresh"), 3600);
    assert_eq!(c.refresh(10).await.expect("refresh"), 600);
    // A second Allocate on the same 5-tuple is 437.
    assert_eq!(c.allocate().await.expect_err("mismatch").code(), Some(437));
    s.shutdown().await;
}

#[tokio::test]
async fn garbage_on_udp_and_tcp_then_allocate_still_works() {
    let (s, addr) = start(allow_loopback(config())).await;
    let junk = UdpSocket::bind("127.0.0.1:0").await.expect("udp");
    let mut seed = 0x1234_5678u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut valid = Vec::new();
    {
        let mut w = stun::MessageWriter::new(
            &mut valid,
            stun::MessageType::new(stun::Method::ALLOCATE, stun::Class::Request),
            stun::TransactionId([7; 12]),
        );
        w.add_requested_transport(17).expect("rt");
        w.add_username("alice").expect("u");
        w.add_lifetime(600).expect("lt");
        w.add_fingerprint().expect("fp");
    }
    for i in 0..500 {
        let len = (next() % 200) as usize;
        let mut pkt: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        match i % 4 {
            0 => pkt = valid[..(next() as usize % valid.len())].to_vec(), // truncated
            1 if pkt.len() >= 8 => {
                pkt[0] &= 0x3F; // looks like STUN
                pkt[4..8].copy_from_slice(&0x2112_A442u32.to_be_bytes());
            }
            2 if !pkt.is_empty() => pkt[0] = 0x40, // looks like ChannelData
            _ => {}
        }
        junk.send_to(&pkt, addr).await.expect("send junk");
    }
    // TCP: several connections with garbage, truncated frames and a huge bogus length.
    for i in 0..20 {
        let mut t = TcpStream::connect(s.tcp_addrs()[0]).await.expect("tcp");
        let len = 1 + (next() % 300) as usize;
        let mut pkt: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if i % 3 == 0 {
            pkt = valid[..valid.len() - 3].to_vec();
        } else if i % 3 == 1 {
            pkt[0] = 0x40;
        }
        let _ = t.write_all(&pkt).await;
        drop(t);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut c = TurnClient::new(addr, "alice", "secret").await.expect("c");
    c.allocate().await.expect("alloc after garbage");
    assert_eq!(
        c.binding().await.expect("binding"),
        c.local_addr().expect("local")
    );
    s.shutdown().await;
}
