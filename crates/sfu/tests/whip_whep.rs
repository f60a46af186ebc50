//! End to end without a browser: a str0m publisher (full ICE) sends Opus frames by WHIP, a str0m viewer
//! receives them by WHEP, both through the SFU's one UDP port. Also: WHIP refuses a missing or foreign token, and
//! the SFU sends publishers transport-wide congestion control feedback.

mod common;

use std::time::Duration;

use common::{http, pump, Peer, Server};
use sfu::{Sfu, SfuConfig};
use str0m::media::Direction;
use str0m::Event;

#[tokio::test]
async fn whip_publisher_reaches_whep_viewer() {
    let server = Server::start().await;
    assert!(server.sfu.udp_addr().port() != 0);
    let token = server.token("pub", "r1");
    let other = server.token("x", "r2");

    let (_, offer, _) = Peer::new(Direction::SendOnly).await;
    assert_eq!(
        http(server.http, "POST", "/whip/r1", None, &offer)
            .await
            .status,
        401
    );
    assert_eq!(
        http(server.http, "POST", "/whip/r1", Some(&other), &offer)
            .await
            .status,
        403
    );
    let (mut publisher, location, _) = server.session(Direction::SendOnly, "r1", &token).await;
    assert!(location.starts_with("/whip/r1/"), "{location}");
    let (mut viewer, _, _) = server.session(Direction::RecvOnly, "r1", &token).await;

    let got = pump(
        &mut publisher,
        &mut [&mut viewer],
        20,
        Duration::from_secs(15),
    )
    .await;
    assert!(publisher.connected, "the publisher connected to the SFU");
    assert!(
        got[0] >= 20,
        "the viewer received {} audio frames through the SFU",
        got[0]
    );

    let r = http(server.http, "DELETE", &location, Some(&token), "").await;
    assert_eq!(r.status, 200);
    let r = http(server.http, "DELETE", &location, Some(&token), "").await;
    assert_eq!(r.status, 404);
}

/// The SFU answers a publisher's packets with transport-wide congestion control feedback (TWCC, negotiated by
/// str0m's offer for Opus too): the publisher's str0m learns from it which packets arrived (its egress loss) and
/// when (a round trip), which it can only know from that feedback.
#[tokio::test]
async fn a_whip_publisher_gets_transport_wide_feedback_from_the_sfu() {
    let server = Server::start().await;
    let token = server.token("pub", "twcc");
    let (mut publisher, _, answer) = server.session(Direction::SendOnly, "twcc", &token).await;
    assert!(
        answer.contains("transport-wide-cc") && answer.contains("transport-cc"),
        "the SFU's answer keeps TWCC: {answer}"
    );
    let mut buf = vec![0u8; 2000];
    let mut events = Vec::new();
    let mut feedback = None;
    let end = std::time::Instant::now() + Duration::from_secs(10);
    while feedback.is_none() && std::time::Instant::now() < end {
        publisher.send_frame();
        events.clear();
        publisher
            .drive(Duration::from_millis(20), &mut buf, &mut events)
            .await;
        feedback = events.iter().find_map(|e| match e {
            Event::PeerStats(s) => s.egress_loss_fraction.zip(s.rtt),
            _ => None,
        });
    }
    assert!(publisher.connected, "the publisher connected to the SFU");
    let (loss, rtt) =
        feedback.expect("the publisher's stats show TWCC feedback from the SFU within 10 s");
    assert!(loss < 0.05, "loopback loses nothing: {loss}");
    assert!(rtt < Duration::from_secs(1), "round trip {rtt:?}");
}

#[tokio::test]
async fn unspecified_listen_ip_needs_a_public_ip() {
    let r = Sfu::start(SfuConfig {
        listen_ip: "0.0.0.0".parse().expect("ip"),
        udp_port: 0,
        ..SfuConfig::default()
    })
    .await;
    assert!(matches!(r, Err(sfu::SfuError::Config(_))));
    let ok = Sfu::start(SfuConfig {
        listen_ip: "0.0.0.0".parse().expect("ip"),
        udp_port: 0,
        public_ip: vec!["127.0.0.1".parse().expect("ip")],
        ..SfuConfig::default()
    })
    .await
    .expect("starts with a public ip");
    assert_eq!(ok.udp_addr().ip().to_string(), "0.0.0.0");
}

#[tokio::test]
async fn one_dual_stack_port_serves_an_ipv4_publisher_and_an_ipv6_viewer() {
    let server = Server::with(SfuConfig {
        listen_ip: "::".parse().expect("ip"),
        udp_port: 0,
        public_ip: vec!["127.0.0.1".parse().expect("ip"), "::1".parse().expect("ip")],
        ..SfuConfig::default()
    })
    .await;
    let token = server.token("pub", "r6");
    let (mut publisher, _, answer) = server
        .session_from(
            "127.0.0.1".parse().expect("ip"),
            Direction::SendOnly,
            "r6",
            &token,
        )
        .await;
    assert!(
        answer.contains(" 127.0.0.1 ") && answer.contains(" ::1 "),
        "candidates for both public addresses: {answer}"
    );
    let (mut viewer, _, _) = server
        .session_from(
            "::1".parse().expect("ip"),
            Direction::RecvOnly,
            "r6",
            &token,
        )
        .await;
    let got = pump(
        &mut publisher,
        &mut [&mut viewer],
        20,
        Duration::from_secs(15),
    )
    .await;
    assert!(publisher.connected, "the IPv4 publisher connected");
    assert!(
        got[0] >= 20,
        "the IPv6 viewer received {} frames from the IPv4 publisher",
        got[0]
    );
}
