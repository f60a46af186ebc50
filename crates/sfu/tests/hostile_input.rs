//! Hostile input on every SFU surface while a session is live: junk datagrams on the media UDP port (random
//! bytes, malformed and forged STUN, RTP/RTCP/DTLS look-alikes, a captured packet replayed from elsewhere), junk
//! on the ICE-TCP port (lying frame lengths, empty frames, idle connections) and malformed WHIP/WHEP requests.
//! Each HTTP request gets a clear 4xx; the live WHIP→WHEP session keeps its media flowing throughout, and a new
//! viewer still joins afterwards.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{http_raw, pump, Server};
use str0m::media::Direction;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, UdpSocket};

/// A small deterministic generator (xorshift64*): reproducible junk without a dependency.
struct Junk(u64);

impl Junk {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// `min` random bytes and up to `extra` more.
    fn some(&mut self, min: usize, extra: usize) -> Vec<u8> {
        let n = min + self.below(extra);
        self.bytes(n)
    }
}

/// A STUN message: `class_method`, then `attrs` as (type, value) with their true lengths, the header's length
/// field set to `len` when given (a lie) or the true one.
fn stun(class_method: u16, attrs: &[(u16, &[u8])], len: Option<u16>) -> Vec<u8> {
    let mut body = Vec::new();
    for (t, v) in attrs {
        body.extend_from_slice(&t.to_be_bytes());
        body.extend_from_slice(&(v.len() as u16).to_be_bytes());
        body.extend_from_slice(v);
        while body.len() % 4 != 0 {
            body.push(0);
        }
    }
    let mut m = Vec::new();
    m.extend_from_slice(&class_method.to_be_bytes());
    m.extend_from_slice(&len.unwrap_or(body.len() as u16).to_be_bytes());
    m.extend_from_slice(&[0x21, 0x12, 0xA4, 0x42]);
    m.extend_from_slice(&[7; 12]);
    m.extend_from_slice(&body);
    m
}

const BINDING_REQUEST: u16 = 0x0001;
const USERNAME: u16 = 0x0006;
const MESSAGE_INTEGRITY: u16 = 0x0008;
const PRIORITY: u16 = 0x0024;
const FINGERPRINT: u16 = 0x8028;

/// The USERNAME of an attacker's ICE check to the session whose (SFU-side) ufrag is `ufrag`.
fn forged_user(ufrag: &str) -> String {
    format!("{ufrag}:attacker")
}

/// An ICE check for the session whose (SFU-side) ufrag is `ufrag`, from an attacker: a made-up `mac` as its
/// MESSAGE-INTEGRITY.
fn forged_check(ufrag: &str, mac: &[u8]) -> Vec<u8> {
    let user = forged_user(ufrag);
    stun(
        BINDING_REQUEST,
        &[
            (USERNAME, user.as_bytes()),
            (PRIORITY, &[0, 0, 0, 1]),
            (MESSAGE_INTEGRITY, mac),
        ],
        None,
    )
}

/// Every kind of junk datagram, `rounds` times over, from a few sockets. The SFU's ICE ufrag makes forged
/// requests reach the live session's ICE agent (which must refuse them: wrong MESSAGE-INTEGRITY).
fn datagrams(ufrag: &str, rounds: usize) -> Vec<Vec<u8>> {
    let mut g = Junk(0x5eed_1234_abcd_9876);
    let forged_user = forged_user(ufrag);
    let mut out = vec![Vec::new(), vec![0], vec![0x80], vec![22, 0xfe, 0xfd]];
    for _ in 0..rounds {
        out.push(g.some(0, 1500));
        // Forged ICE checks for the live session: a made-up integrity, none at all, a lying length.
        out.push(forged_check(ufrag, &g.bytes(20)));
        let user = forged_user.as_bytes();
        out.push(stun(BINDING_REQUEST, &[(USERNAME, user)], None));
        out.push(stun(
            BINDING_REQUEST,
            &[(USERNAME, user), (FINGERPRINT, &[1, 2, 3, 4])],
            Some(0xfffc),
        ));
        // A USERNAME without the colon, one that is not UTF-8, an attribute longer than the message.
        out.push(stun(BINDING_REQUEST, &[(USERNAME, ufrag.as_bytes())], None));
        out.push(stun(
            BINDING_REQUEST,
            &[(USERNAME, &[0xff, 0xfe, b':', 0x80])],
            None,
        ));
        let mut long = stun(BINDING_REQUEST, &[(USERNAME, user)], None);
        long[22..24].copy_from_slice(&0x4000u16.to_be_bytes());
        out.push(long);
        // Other STUN classes and methods (responses, indications, TURN methods) with random attributes.
        let cm = (g.next() as u16) & 0x3eff;
        let attr = g.some(0, 64);
        out.push(stun(cm, &[(g.next() as u16, &attr)], None));
        // RTP and RTCP look-alikes (version 2), DTLS look-alikes (a handshake record).
        let mut rtp = g.some(12, 1200);
        rtp[0] = 0x80 | (rtp[0] & 0x3f);
        out.push(rtp);
        let mut rtcp = g.some(8, 200);
        rtcp[0] = 0x81;
        rtcp[1] = 200 + (g.below(7) as u8);
        out.push(rtcp);
        let mut dtls = g.some(13, 300);
        dtls[0] = 20 + g.below(44) as u8;
        dtls[1] = 0xfe;
        dtls[2] = 0xfd;
        out.push(dtls);
    }
    out
}

async fn send_udp_junk(to: SocketAddr, junk: &[Vec<u8>], replay: &[u8]) {
    let mut socks = Vec::new();
    for _ in 0..4 {
        socks.push(UdpSocket::bind("127.0.0.1:0").await.expect("bind"));
    }
    for (i, d) in junk.iter().enumerate() {
        let _ = socks[i % socks.len()].send_to(d, to).await;
        if i % 64 == 0 {
            // A captured datagram of the live publisher, replayed from an address the SFU does not know.
            let _ = socks[(i / 64) % socks.len()].send_to(replay, to).await;
            // Bounded: a burst, then a breath (the junk must not crowd out the peers' own datagrams here).
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

/// ICE-TCP (RFC 4571 framing): a frame announcing more than is sent, empty frames, random bytes, a frame
/// carrying forged STUN, and idle connections left open.
async fn send_tcp_junk(to: SocketAddr, forged: &[u8]) -> Vec<TcpStream> {
    let mut g = Junk(42);
    let mut idle = Vec::new();
    let writes: Vec<Vec<u8>> = vec![
        [&[0xff, 0xff][..], &[1, 2, 3]].concat(),
        vec![0; 64],
        g.bytes(10_000),
        [&(forged.len() as u16).to_be_bytes()[..], forged].concat(),
    ];
    for w in &writes {
        if let Ok(mut s) = TcpStream::connect(to).await {
            let _ = s.write_all(w).await;
            idle.push(s);
        }
    }
    for _ in 0..50 {
        if let Ok(s) = TcpStream::connect(to).await {
            idle.push(s);
        }
    }
    idle
}

/// An HTTP request and the status it must get: method, path, bearer token, content type, body, status.
type Case<'a> = (&'a str, String, Option<&'a str>, &'a str, Vec<u8>, u16);

#[tokio::test]
async fn junk_on_the_media_ports_and_bad_whip_requests_leave_a_live_session_untouched() {
    let server = Server::start().await;
    let token = server.token("pub", "r1");
    let (mut publisher, location, answer) = server.session(Direction::SendOnly, "r1", &token).await;
    let (mut viewer, _, _) = server.session(Direction::RecvOnly, "r1", &token).await;
    let before = pump(
        &mut publisher,
        &mut [&mut viewer],
        20,
        Duration::from_secs(15),
    )
    .await;
    assert!(before[0] >= 20, "media flows before the junk: {before:?}");

    // HTTP: each malformed request gets its own clear 4xx.
    let h = server.http;
    let sdp = "application/sdp";
    let cases: Vec<Case> = vec![
        (
            "POST",
            "/whip/r1".into(),
            Some(&token),
            sdp,
            b"hello".to_vec(),
            400,
        ),
        (
            "POST",
            "/whip/r1".into(),
            Some(&token),
            sdp,
            b"v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n".to_vec(),
            400,
        ),
        (
            "POST",
            "/whip/r1".into(),
            Some(&token),
            sdp,
            vec![0xff, 0xfe, 0x00],
            400,
        ),
        (
            "POST",
            "/whip/r1".into(),
            Some(&token),
            sdp,
            vec![b'a'; 70_000],
            413,
        ),
        (
            "POST",
            "/whip/r1".into(),
            Some(&token),
            "text/plain",
            b"v=0\r\n".to_vec(),
            415,
        ),
        (
            "POST",
            "/whep/r1".into(),
            Some(&token),
            sdp,
            answer.clone().into_bytes(),
            400,
        ),
        (
            "POST",
            "/whip/r1".into(),
            Some(""),
            sdp,
            b"v=0\r\n".to_vec(),
            401,
        ),
        (
            "POST",
            "/whip/r1".into(),
            Some("a.b.c"),
            sdp,
            b"v=0\r\n".to_vec(),
            401,
        ),
        (
            "POST",
            "/whip/other%00room".into(),
            Some(&token),
            sdp,
            b"v=0\r\n".to_vec(),
            403,
        ),
        (
            "PATCH",
            location.clone(),
            Some(&token),
            "application/trickle-ice-sdpfrag",
            b"a=ice-ufrag:someoneelse\r\na=ice-pwd:xxxxxxxxxxxxxxxxxxxxxxxx\r\n".to_vec(),
            422,
        ),
        (
            "PATCH",
            "/whip/r1/no-such-session".into(),
            Some(&token),
            "application/trickle-ice-sdpfrag",
            b"a=candidate:1 1 udp 1 127.0.0.1 9 typ host\r\n".to_vec(),
            404,
        ),
        (
            "DELETE",
            "/whip/r1/no-such-session".into(),
            Some(&token),
            sdp,
            Vec::new(),
            404,
        ),
    ];
    for (method, path, tok, ctype, body, want) in &cases {
        let r = http_raw(h, method, path, *tok, ctype, body).await;
        assert_eq!(
            r.status,
            *want,
            "{method} {path} ({} bytes): {}",
            body.len(),
            r.body
        );
        assert!(
            !r.body.trim().is_empty(),
            "{method} {path}: the error says why"
        );
    }
    // A trickled candidate that does not parse is refused or ignored; the session stays.
    let r = http_raw(
        h,
        "PATCH",
        &location,
        Some(&token),
        "application/trickle-ice-sdpfrag",
        b"a=candidate:garbage\r\na=candidate:1 1 udp x y z typ host\r\n",
    )
    .await;
    assert!(
        matches!(r.status, 204 | 400),
        "junk candidates: {} {}",
        r.status,
        r.body
    );

    // Media ports: junk while the session runs.
    let ufrag = answer
        .lines()
        .find_map(|l| l.trim().strip_prefix("a=ice-ufrag:"))
        .expect("the answer has the SFU's ufrag")
        .to_owned();
    let junk = datagrams(&ufrag, 1500);
    let forged = forged_check(&ufrag, &[0x5a; 20]);
    let udp = server.sfu.udp_addr();
    let tcp = server.sfu.tcp_addr().expect("ICE-TCP listens by default");
    let replay = publisher.last_sent.clone();
    assert!(!replay.is_empty(), "the publisher sent something to replay");
    let junk_task = tokio::spawn(async move {
        send_udp_junk(udp, &junk, &replay).await;
        send_tcp_junk(tcp, &forged).await
    });
    let during = pump(
        &mut publisher,
        &mut [&mut viewer],
        usize::MAX,
        Duration::from_secs(2),
    )
    .await;
    let idle_tcp = junk_task.await.expect("junk sent");
    assert!(
        idle_tcp.len() >= 50,
        "ICE-TCP accepted the connections: {}",
        idle_tcp.len()
    );
    let after = pump(
        &mut publisher,
        &mut [&mut viewer],
        usize::MAX,
        Duration::from_secs(2),
    )
    .await;
    eprintln!(
        "frames to the viewer: {} during the junk, {} after",
        during[0], after[0]
    );
    // ~50 frames a second are sent (one per pump round of two 10 ms drives: fewer on a loaded machine).
    assert!(
        during[0] >= 20 && after[0] >= 20,
        "the live session's media kept flowing: {} frames during the junk, {} after",
        during[0],
        after[0]
    );

    // The SFU still takes new sessions: a second viewer joins and gets the media.
    let (mut late, _, _) = server.session(Direction::RecvOnly, "r1", &token).await;
    let got = pump(
        &mut publisher,
        &mut [&mut viewer, &mut late],
        20,
        Duration::from_secs(15),
    )
    .await;
    assert!(
        got.iter().all(|&n| n >= 20),
        "both viewers get media after the junk: {got:?}"
    );
    drop(idle_tcp);
}
