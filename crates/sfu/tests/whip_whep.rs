//! End to end without a browser: a str0m publisher (full ICE) sends Opus frames by WHIP, a str0m viewer
//! receives them by WHEP, both through the SFU's one UDP port. Also: WHIP refuses a missing or foreign token.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sfu::{Sfu, SfuConfig};
use signal::{Claims, KeySet, TokenKey, VideoGrant};
use str0m::change::SdpAnswer;
use str0m::format::Codec;
use str0m::media::{Direction, Frequency, MediaKind, MediaTime};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/sdp\r\n{auth}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.expect("read");
    let text = String::from_utf8_lossy(&out).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let location = head
        .lines()
        .find_map(|l| {
            l.strip_prefix("location: ")
                .or_else(|| l.strip_prefix("Location: "))
        })
        .unwrap_or("")
        .to_string();
    (status, location, body.to_string())
}

struct Peer {
    rtc: Rtc,
    mid: str0m::media::Mid,
    sock: UdpSocket,
    addr: SocketAddr,
}

impl Peer {
    async fn new(kind: Direction) -> (Peer, String, str0m::change::SdpPendingOffer) {
        let sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let addr = sock.local_addr().expect("addr");
        let mut rtc = Rtc::builder().build(Instant::now());
        rtc.add_local_candidate(Candidate::host(addr, "udp").expect("candidate"));
        let mut api = rtc.sdp_api();
        let mid = api.add_media(MediaKind::Audio, kind, None, None, None);
        let (offer, pending) = api.apply().expect("an offer");
        (
            Peer {
                rtc,
                mid,
                sock,
                addr,
            },
            offer.to_sdp_string(),
            pending,
        )
    }

    /// Drives the Rtc for up to `dur`; returns the events seen.
    async fn drive(&mut self, dur: Duration, buf: &mut [u8], events: &mut Vec<Event>) {
        let end = Instant::now() + dur;
        loop {
            let timeout = loop {
                match self.rtc.poll_output().expect("poll") {
                    Output::Timeout(t) => break t,
                    Output::Transmit(t) => {
                        let _ = self.sock.send_to(&t.contents, t.destination).await;
                    }
                    Output::Event(e) => events.push(e),
                }
            };
            let now = Instant::now();
            if now >= end {
                return;
            }
            let wait = timeout
                .min(end)
                .saturating_duration_since(now)
                .max(Duration::from_millis(1));
            match tokio::time::timeout(wait, self.sock.recv_from(buf)).await {
                Ok(Ok((n, source))) => {
                    if let Ok(contents) = buf[..n].try_into() {
                        let input = Input::Receive(
                            Instant::now(),
                            Receive {
                                proto: Protocol::Udp,
                                source,
                                destination: self.addr,
                                contents,
                            },
                        );
                        self.rtc.handle_input(input).expect("input");
                    }
                }
                _ => self
                    .rtc
                    .handle_input(Input::Timeout(Instant::now()))
                    .expect("timeout"),
            }
        }
    }
}

#[tokio::test]
async fn whip_publisher_reaches_whep_viewer() {
    let sfu = Sfu::start(SfuConfig {
        udp_port: 0,
        ..SfuConfig::default()
    })
    .await
    .expect("SFU starts");
    assert!(sfu.udp_addr().port() != 0);
    let key = TokenKey::new("k", "secret");
    let token = key
        .mint(&Claims::new(
            "pub",
            VideoGrant::join("r1"),
            Duration::from_secs(60),
        ))
        .expect("token");
    let other = key
        .mint(&Claims::new(
            "x",
            VideoGrant::join("r2"),
            Duration::from_secs(60),
        ))
        .expect("token");
    let app = sfu.router(KeySet::new(vec![key]));
    let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let http_addr = tcp.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(tcp, app).await });

    let (mut publisher, offer, pending) = Peer::new(Direction::SendOnly).await;
    assert_eq!(
        http(http_addr, "POST", "/whip/r1", None, &offer).await.0,
        401
    );
    assert_eq!(
        http(http_addr, "POST", "/whip/r1", Some(&other), &offer)
            .await
            .0,
        403
    );
    let (status, location, answer) =
        http(http_addr, "POST", "/whip/r1", Some(&token), &offer).await;
    assert_eq!(status, 201, "{answer}");
    assert!(location.starts_with("/whip/r1/"), "{location}");
    let answer = SdpAnswer::from_sdp_string(&answer).expect("answer parses");
    publisher
        .rtc
        .sdp_api()
        .accept_answer(pending, answer)
        .expect("answer accepted");

    let (mut viewer, offer, pending) = Peer::new(Direction::RecvOnly).await;
    let (status, _, answer) = http(http_addr, "POST", "/whep/r1", Some(&token), &offer).await;
    assert_eq!(status, 201, "{answer}");
    let answer = SdpAnswer::from_sdp_string(&answer).expect("answer parses");
    viewer
        .rtc
        .sdp_api()
        .accept_answer(pending, answer)
        .expect("answer accepted");

    let mut buf = vec![0u8; 2000];
    let mut ev = Vec::new();
    let mut received = 0usize;
    let mut pub_connected = false;
    let mut rtp_time = 0u64;
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline && received < 20 {
        ev.clear();
        publisher
            .drive(Duration::from_millis(10), &mut buf, &mut ev)
            .await;
        pub_connected |= ev.iter().any(|e| matches!(e, Event::Connected));
        if pub_connected {
            let mid = publisher.mid;
            if let Some(w) = publisher.rtc.writer(mid) {
                let pt = w
                    .payload_params()
                    .find(|p| p.spec().codec == Codec::Opus)
                    .map(|p| p.pt());
                if let Some(pt) = pt {
                    rtp_time += 960;
                    let t = MediaTime::new(rtp_time, Frequency::FORTY_EIGHT_KHZ);
                    w.write(pt, Instant::now(), t, vec![0xF8u8, 0xFF, 0xFE])
                        .expect("write");
                }
            }
        }
        ev.clear();
        viewer
            .drive(Duration::from_millis(10), &mut buf, &mut ev)
            .await;
        received += ev
            .iter()
            .filter(|e| matches!(e, Event::MediaData(_)))
            .count();
    }
    assert!(pub_connected, "the publisher connected to the SFU");
    assert!(
        received >= 20,
        "the viewer received {received} audio frames through the SFU"
    );

    let (status, _, _) = http(http_addr, "DELETE", &location, Some(&token), "").await;
    assert_eq!(status, 200);
    let (status, _, _) = http(http_addr, "DELETE", &location, Some(&token), "").await;
    assert_eq!(status, 404);
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
