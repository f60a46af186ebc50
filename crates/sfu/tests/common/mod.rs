//! Shared by the SFU's cross-process tests: an SFU with its WHIP/WHEP router on loopback, a raw HTTP client,
//! and a str0m peer (full ICE, one audio m-line) that publishes or views by WHIP/WHEP.
#![allow(dead_code)] // each test file uses its own part

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sfu::{Sfu, SfuConfig};
use signal::{Claims, KeySet, TokenKey, VideoGrant};
use str0m::change::{SdpAnswer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{Direction, Frequency, MediaKind, MediaTime};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

/// An HTTP reply: status, `Location` header, body.
pub struct Reply {
    pub status: u16,
    pub location: String,
    pub body: String,
}

/// One HTTP/1.1 request with `Connection: close`.
pub async fn http_raw(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    content_type: &str,
    body: &[u8],
) -> Reply {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: {content_type}\r\n{auth}Content-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.expect("write");
    s.write_all(body).await.expect("write");
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
    Reply {
        status,
        location,
        body: body.to_string(),
    }
}

/// An HTTP request with an SDP body.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> Reply {
    http_raw(
        addr,
        method,
        path,
        token,
        "application/sdp",
        body.as_bytes(),
    )
    .await
}

/// An SFU (UDP and ICE-TCP on free loopback ports) and its HTTP router, with a token key.
pub struct Server {
    pub sfu: Arc<Sfu>,
    pub http: SocketAddr,
    pub key: TokenKey,
}

impl Server {
    pub async fn start() -> Server {
        Server::with(SfuConfig {
            udp_port: 0,
            ..SfuConfig::default()
        })
        .await
    }

    pub async fn with(config: SfuConfig) -> Server {
        let sfu = Sfu::start(config).await.expect("SFU starts");
        let key = TokenKey::new("k", "secret");
        let app = sfu.router(KeySet::new(vec![key.clone()]));
        let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let http = tcp.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(tcp, app).await });
        Server { sfu, http, key }
    }

    /// A token for `identity` to join `room`.
    pub fn token(&self, identity: &str, room: &str) -> String {
        self.key
            .mint(&Claims::new(
                identity,
                VideoGrant::join(room),
                Duration::from_secs(60),
            ))
            .expect("token")
    }

    /// A peer publishing (`SendOnly`, by WHIP) or viewing (`RecvOnly`, by WHEP) in `room`, its offer answered.
    /// Also returns the session URL and the SFU's answer.
    pub async fn session(
        &self,
        kind: Direction,
        room: &str,
        token: &str,
    ) -> (Peer, String, String) {
        self.session_from("127.0.0.1".parse().expect("ip"), kind, room, token)
            .await
    }

    /// [`Server::session`] for a peer on `ip`.
    pub async fn session_from(
        &self,
        ip: std::net::IpAddr,
        kind: Direction,
        room: &str,
        token: &str,
    ) -> (Peer, String, String) {
        let (mut peer, offer, pending) = Peer::on(ip, kind).await;
        let path = match kind {
            Direction::SendOnly => format!("/whip/{room}"),
            _ => format!("/whep/{room}"),
        };
        let r = http(self.http, "POST", &path, Some(token), &offer).await;
        assert_eq!(r.status, 201, "{path}: {}", r.body);
        peer.accept(pending, &r.body);
        (peer, r.location, r.body)
    }
}

pub struct Peer {
    pub rtc: Rtc,
    pub mid: str0m::media::Mid,
    sock: UdpSocket,
    addr: SocketAddr,
    rtp_time: u64,
    pub connected: bool,
    /// The last datagram this peer sent (to replay it from elsewhere).
    pub last_sent: Vec<u8>,
}

impl Peer {
    pub async fn new(kind: Direction) -> (Peer, String, SdpPendingOffer) {
        Peer::on("127.0.0.1".parse().expect("ip"), kind).await
    }

    /// A peer with one host candidate on `ip`.
    pub async fn on(ip: std::net::IpAddr, kind: Direction) -> (Peer, String, SdpPendingOffer) {
        let sock = UdpSocket::bind(SocketAddr::new(ip, 0)).await.expect("bind");
        let addr = sock.local_addr().expect("addr");
        // Stats every 500 ms: a test can see what the peer's transport-wide feedback told it.
        let mut rtc = Rtc::builder()
            .set_stats_interval(Some(Duration::from_millis(500)))
            .build(Instant::now());
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
                rtp_time: 0,
                connected: false,
                last_sent: Vec::new(),
            },
            offer.to_sdp_string(),
            pending,
        )
    }

    pub fn accept(&mut self, pending: SdpPendingOffer, answer: &str) {
        let answer = SdpAnswer::from_sdp_string(answer).expect("answer parses");
        self.rtc
            .sdp_api()
            .accept_answer(pending, answer)
            .expect("answer accepted");
    }

    /// Drives the Rtc for up to `dur`; returns the events seen.
    pub async fn drive(&mut self, dur: Duration, buf: &mut [u8], events: &mut Vec<Event>) {
        let end = Instant::now() + dur;
        loop {
            let timeout = loop {
                match self.rtc.poll_output().expect("poll") {
                    Output::Timeout(t) => break t,
                    Output::Transmit(t) => {
                        let _ = self.sock.send_to(&t.contents, t.destination).await;
                        self.last_sent.clear();
                        self.last_sent.extend_from_slice(&t.contents);
                    }
                    Output::Event(e) => {
                        self.connected |= matches!(e, Event::Connected);
                        events.push(e);
                    }
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

    /// A publisher: writes one 20 ms Opus frame, once connected.
    pub fn send_frame(&mut self) {
        if !self.connected {
            return;
        }
        let mid = self.mid;
        let Some(w) = self.rtc.writer(mid) else {
            return;
        };
        let Some(pt) = w
            .payload_params()
            .find(|p| p.spec().codec == Codec::Opus)
            .map(|p| p.pt())
        else {
            return;
        };
        self.rtp_time += 960;
        let t = MediaTime::new(self.rtp_time, Frequency::FORTY_EIGHT_KHZ);
        w.write(pt, Instant::now(), t, vec![0xF8u8, 0xFF, 0xFE])
            .expect("write");
    }
}

/// Runs a publisher and its viewers (a frame every ~20 ms) until each viewer received `want` frames, for at most
/// `dur`; the frames each viewer received.
pub async fn pump(
    publisher: &mut Peer,
    viewers: &mut [&mut Peer],
    want: usize,
    dur: Duration,
) -> Vec<usize> {
    let mut buf = vec![0u8; 2000];
    let mut ev = Vec::new();
    let mut got = vec![0; viewers.len()];
    let end = Instant::now() + dur;
    while Instant::now() < end && got.iter().any(|&n| n < want) {
        publisher.send_frame();
        ev.clear();
        publisher
            .drive(Duration::from_millis(10), &mut buf, &mut ev)
            .await;
        for (v, n) in viewers.iter_mut().zip(got.iter_mut()) {
            ev.clear();
            v.drive(Duration::from_millis(10), &mut buf, &mut ev).await;
            *n += ev
                .iter()
                .filter(|e| matches!(e, Event::MediaData(_)))
                .count();
        }
    }
    got
}
