//! Live tests of DONT-FRAGMENT, SHA-256 long-term credentials and address-family selection,
//! our client against our server.

use std::net::SocketAddr;
use std::time::Duration;

use stun::AddressFamily;
use tokio::net::UdpSocket;
use turn::client::{PasswordAlgorithm, TurnClient};
use turn::{TurnConfig, TurnServer};

mod common;

fn config() -> TurnConfig {
    common::loopback_config(1)
}

async fn start(c: TurnConfig) -> (TurnServer, SocketAddr) {
    let s = TurnServer::start(c).await.expect("start");
    let addr = s.udp_addrs()[0];
    (s, addr)
}

#[tokio::test]
async fn dont_fragment_allocate_and_send_indication() {
    let (s, addr) = start(config()).await;
    let mut c = TurnClient::new(addr, "alice", "secret").await.expect("c");
    c.dont_fragment = true;
    // Before: 420 Unknown Attribute. Now the relay socket gets IP_PMTUDISC_DO.
    let relayed = c.allocate().await.expect("allocate with DONT-FRAGMENT");
    let peer = UdpSocket::bind("127.0.0.1:0").await.expect("peer");
    let peer_addr = peer.local_addr().expect("addr");
    c.create_permission(peer_addr).await.expect("perm");
    let mut buf = [0u8; 2048];
    for df in [true, false] {
        c.send_indication(b"df payload", peer_addr, df)
            .await
            .expect("send");
        let (n, from) = tokio::time::timeout(Duration::from_secs(2), peer.recv_from(&mut buf))
            .await
            .expect("relayed in time")
            .expect("recv");
        assert_eq!(&buf[..n], b"df payload");
        assert_eq!(from, relayed);
    }
    // A plain allocation (no DF) also relays Send indications carrying DONT-FRAGMENT.
    let mut d = TurnClient::new(addr, "alice", "secret").await.expect("d");
    let relayed = d.allocate().await.expect("allocate");
    d.create_permission(peer_addr).await.expect("perm");
    d.send_indication(b"df once", peer_addr, true)
        .await
        .expect("send");
    let (n, from) = tokio::time::timeout(Duration::from_secs(2), peer.recv_from(&mut buf))
        .await
        .expect("relayed in time")
        .expect("recv");
    assert_eq!((&buf[..n], from), (&b"df once"[..], relayed));
    s.shutdown().await;
}

#[tokio::test]
async fn sha256_long_term_credentials_ours_vs_ours() {
    let mut cfg = config();
    cfg.static_auth_secret = Some("restsecret".into());
    let (s, addr) = start(cfg).await;
    let mut a = TurnClient::new(addr, "alice", "secret").await.expect("a");
    a.password_algorithm = PasswordAlgorithm::Sha256;
    let (user, pass) = turn::rest_credentials(
        "restsecret",
        "bob",
        Duration::from_secs(600),
        std::time::SystemTime::now(),
    );
    let mut b = TurnClient::new(addr, &user, &pass).await.expect("b");
    b.password_algorithm = PasswordAlgorithm::Sha256;
    let ra = a.allocate().await.expect("alloc a (SHA-256)");
    let rb = b.allocate().await.expect("alloc b (SHA-256, REST)");
    a.create_permission(rb).await.expect("perm a");
    b.channel_bind(ra).await.expect("bind b");
    a.channel_bind(rb).await.expect("bind a");
    let mut buf = [0u8; 2048];
    a.send_to(b"sha256 hello", rb).await.expect("send");
    let (n, from) = b
        .recv_from(&mut buf, Duration::from_secs(2))
        .await
        .expect("recv");
    assert_eq!((&buf[..n], from), (&b"sha256 hello"[..], ra));
    assert_eq!(a.refresh(1200).await.expect("refresh"), 1200);
    // Wrong password with SHA-256 → 401.
    let mut c = TurnClient::new(addr, "alice", "wrong").await.expect("c");
    c.password_algorithm = PasswordAlgorithm::Sha256;
    assert_eq!(c.allocate().await.expect_err("wrong").code(), Some(401));
    // MD5 clients keep working next to SHA-256 ones.
    let mut d = TurnClient::new(addr, "alice", "secret").await.expect("d");
    d.allocate().await.expect("alloc d (MD5)");
    s.shutdown().await;
}

fn ipv6_available() -> bool {
    std::net::UdpSocket::bind("[::1]:0").is_ok()
}

#[tokio::test]
async fn ipv6_relay_with_requested_address_family() {
    if !ipv6_available() {
        eprintln!("skipping: no IPv6 loopback");
        return;
    }
    let cfg = TurnConfig {
        listening_ip: vec!["::1".parse().expect("ip")],
        allowed_peer_ip: vec!["::1".into()],
        ..config()
    };
    let (s, addr) = start(cfg).await;
    assert!(addr.is_ipv6());
    // Default family (IPv4) is not configured → 440.
    let mut c = TurnClient::new(addr, "alice", "secret").await.expect("c");
    assert_eq!(c.allocate().await.expect_err("no v4").code(), Some(440));
    let mut a = TurnClient::new(addr, "alice", "secret").await.expect("a");
    a.requested_family = Some(AddressFamily::V6);
    let ra = a.allocate().await.expect("IPv6 allocate");
    assert_eq!(ra.ip().to_string(), "::1");
    let mut b = TurnClient::new(addr, "alice", "secret").await.expect("b");
    b.requested_family = Some(AddressFamily::V6);
    let rb = b.allocate().await.expect("IPv6 allocate b");
    a.create_permission(rb).await.expect("perm a");
    b.create_permission(ra).await.expect("perm b");
    // IPv4 peer on an IPv6 relay → 443.
    assert_eq!(
        a.create_permission("127.0.0.1:9".parse().expect("p"))
            .await
            .expect_err("family")
            .code(),
        Some(443)
    );
    let mut buf = [0u8; 2048];
    a.send_to(b"v6 send", rb).await.expect("send");
    let (n, from) = b
        .recv_from(&mut buf, Duration::from_secs(2))
        .await
        .expect("recv");
    assert_eq!((&buf[..n], from), (&b"v6 send"[..], ra));
    b.channel_bind(ra).await.expect("bind");
    b.send_to(b"v6 channel", ra).await.expect("send");
    let (n, from) = a
        .recv_from(&mut buf, Duration::from_secs(2))
        .await
        .expect("recv");
    assert_eq!((&buf[..n], from), (&b"v6 channel"[..], rb));
    s.shutdown().await;
}

#[tokio::test]
async fn dual_allocation_ipv4_and_ipv6() {
    if !ipv6_available() {
        eprintln!("skipping: no IPv6 loopback");
        return;
    }
    let cfg = TurnConfig {
        relay_ip: vec!["127.0.0.1".parse().expect("ip"), "::1".parse().expect("ip")],
        allowed_peer_ip: vec!["127.0.0.1".into(), "::1".into()],
        ..config()
    };
    let (s, addr) = start(cfg).await;
    let mut c = TurnClient::new(addr, "alice", "secret").await.expect("c");
    c.additional_family = Some(AddressFamily::V6);
    let first = c.allocate().await.expect("dual allocate");
    let relays = c.relayed_addrs().to_vec();
    assert_eq!(relays.len(), 2, "{relays:?}");
    assert_eq!(first, relays[0]);
    assert!(relays[0].is_ipv4() && relays[1].is_ipv6(), "{relays:?}");
    // Peers of both families through the one allocation.
    let p4 = UdpSocket::bind("127.0.0.1:0").await.expect("p4");
    let p6 = UdpSocket::bind("[::1]:0").await.expect("p6");
    let (a4, a6) = (p4.local_addr().expect("a"), p6.local_addr().expect("a"));
    c.create_permission(a4).await.expect("perm v4");
    c.create_permission(a6).await.expect("perm v6");
    c.channel_bind(a6).await.expect("bind v6");
    let mut buf = [0u8; 2048];
    for (peer, sock, relay) in [(a4, &p4, relays[0]), (a6, &p6, relays[1])] {
        c.send_to(b"to peer", peer).await.expect("send");
        let (n, from) = tokio::time::timeout(Duration::from_secs(2), sock.recv_from(&mut buf))
            .await
            .expect("in time")
            .expect("recv");
        assert_eq!((&buf[..n], from), (&b"to peer"[..], relay));
        sock.send_to(b"from peer", relay).await.expect("reply");
        let (n, from) = c
            .recv_from(&mut buf, Duration::from_secs(2))
            .await
            .expect("recv");
        assert_eq!((&buf[..n], from), (&b"from peer"[..], peer));
    }
    // Deleting the allocation frees both relays.
    assert_eq!(c.refresh(0).await.expect("delete"), 0);
    assert_eq!(s.allocation_count(), 0);
    tokio::time::sleep(Duration::from_millis(100)).await;
    p6.send_to(b"late", relays[1]).await.expect("late");
    assert!(c
        .recv_from(&mut buf, Duration::from_millis(300))
        .await
        .is_err());
    // IPv4-only server: dual request → IPv4 relay + ADDRESS-ERROR-CODE 440 for IPv6.
    let (s4, addr4) = start(config()).await;
    let mut d = TurnClient::new(addr4, "alice", "secret").await.expect("d");
    d.additional_family = Some(AddressFamily::V6);
    d.allocate().await.expect("v4 only");
    assert_eq!(d.relayed_addrs().len(), 1);
    s4.shutdown().await;
    s.shutdown().await;
}
