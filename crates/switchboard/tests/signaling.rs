//! Cross-process tests of `switchboard serve`'s signaling: a real server process, real WebSocket clients.

use std::process::Command;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

mod common;
use common::{bin, serve};

async fn http_get(url: &str) -> (u16, String) {
    // A tiny HTTP/1.0 GET, enough for our own server.
    let u = url.strip_prefix("http://").expect("http url");
    let (host, path) = u
        .split_once('/')
        .map(|(h, p)| (h, format!("/{p}")))
        .unwrap_or((u, "/".into()));
    let mut s = tokio::net::TcpStream::connect(host).await.expect("connect");
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.expect("read");
    let status = buf
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

async fn dev_token(base: &str, room: &str, name: &str) -> String {
    let (status, body) = http_get(&format!("{base}/dev/token?room={room}&name={name}")).await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("json");
    v["token"].as_str().expect("token").to_string()
}

async fn connect(base: &str) -> Ws {
    let url = format!("{}/ws", base.replace("http://", "ws://"));
    tokio_tungstenite::connect_async(url)
        .await
        .expect("ws connect")
        .0
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::text(v.to_string())).await.expect("send");
}

/// Next JSON message (skipping nothing); `None` when the socket closed.
async fn recv(ws: &mut Ws) -> Option<Value> {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("timed out waiting for a message")?;
        match m {
            Ok(Message::Text(t)) => {
                return Some(serde_json::from_str(&t).expect("server sent JSON"))
            }
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => continue,
        }
    }
}

async fn recv_type(ws: &mut Ws, ty: &str) -> Value {
    loop {
        let v = recv(ws)
            .await
            .unwrap_or_else(|| panic!("closed while waiting for {ty}"));
        if v["type"] == ty {
            return v;
        }
    }
}

async fn join(base: &str, room: &str, name: &str) -> (Ws, Value) {
    let token = dev_token(base, room, name).await;
    let mut ws = connect(base).await;
    send(
        &mut ws,
        json!({"type": "join", "token": token, "protocol": 1}),
    )
    .await;
    let joined = recv_type(&mut ws, "joined").await;
    (ws, joined)
}

#[tokio::test]
async fn offers_are_relayed_only_within_a_room() {
    let s = serve(&[], &[]);
    let (mut a, ja) = join(&s.addr, "r1", "a").await;
    let (mut b, jb) = join(&s.addr, "r1", "b").await;
    let (mut c, jc) = join(&s.addr, "r2", "c").await;
    let a_id = ja["participant"]["id"].as_str().unwrap().to_string();
    let b_id = jb["participant"]["id"].as_str().unwrap().to_string();
    let c_id = jc["participant"]["id"].as_str().unwrap().to_string();
    assert_eq!(jb["participants"][0]["id"], a_id.as_str());
    assert_eq!(jc["participants"].as_array().unwrap().len(), 0);

    send(
        &mut b,
        json!({"type": "offer", "to": a_id, "sdp": "v=0 test"}),
    )
    .await;
    let offer = recv_type(&mut a, "offer").await;
    assert_eq!(offer["from"], b_id.as_str());
    assert_eq!(offer["sdp"], "v=0 test");

    // Addressing someone in another room is refused, and nothing reaches them.
    send(&mut b, json!({"type": "offer", "to": c_id, "sdp": "x"})).await;
    let err = recv_type(&mut b, "error").await;
    assert_eq!(err["code"], "unknown_participant");
    send(&mut c, json!({"type": "ping", "ts": "after"})).await;
    let next = recv(&mut c).await.unwrap();
    assert_eq!(next, json!({"type": "pong", "ts": "after"}));
}

#[tokio::test]
async fn room_full_refuses_the_extra_participant() {
    let s = serve(&[("SWITCHBOARD_ROOMS_MAX_PARTICIPANTS", "2")], &[]);
    let (_a, _) = join(&s.addr, "full", "a").await;
    let (_b, _) = join(&s.addr, "full", "b").await;
    let token = dev_token(&s.addr, "full", "c").await;
    let mut c = connect(&s.addr).await;
    send(
        &mut c,
        json!({"type": "join", "token": token, "protocol": 1}),
    )
    .await;
    let err = recv(&mut c).await.unwrap();
    assert_eq!(err["code"], "room_full", "{err}");
    assert!(recv(&mut c).await.is_none(), "socket should close");
}

#[tokio::test]
async fn flooding_gets_rate_limited_then_disconnected() {
    let s = serve(
        &[
            ("SWITCHBOARD_LIMITS_MESSAGES_PER_SECOND", "5"),
            ("SWITCHBOARD_LIMITS_BURST", "10"),
        ],
        &[],
    );
    let (mut a, _) = join(&s.addr, "flood", "a").await;
    for i in 0..40 {
        // The server may close before we finish sending.
        if a.send(Message::text(json!({"type":"ping","ts":i}).to_string()))
            .await
            .is_err()
        {
            break;
        }
    }
    let mut pongs = 0;
    let mut limited = 0;
    while let Some(v) = recv(&mut a).await {
        match v["type"].as_str() {
            Some("pong") => pongs += 1,
            Some("error") if v["code"] == "rate_limited" => limited += 1,
            _ => {}
        }
    }
    // The burst of 10 covers the join and 9 pings (plus what refills while sending).
    assert!((9..=12).contains(&pongs), "pongs {pongs}");
    assert_eq!(limited, 10, "closed after 10 consecutive violations");
}

#[tokio::test]
async fn join_deadline_and_wrong_protocol_close_the_socket() {
    let s = serve(&[("SWITCHBOARD_LIMITS_JOIN_TIMEOUT_SECS", "1")], &[]);
    let mut idle = connect(&s.addr).await;
    let t0 = std::time::Instant::now();
    assert!(recv(&mut idle).await.is_none());
    assert!(t0.elapsed() < Duration::from_secs(5));

    let token = dev_token(&s.addr, "r", "a").await;
    let mut ws = connect(&s.addr).await;
    send(
        &mut ws,
        json!({"type": "join", "token": token, "protocol": 2}),
    )
    .await;
    let err = recv(&mut ws).await.unwrap();
    assert_eq!(err["code"], "unsupported_protocol");
    assert!(recv(&mut ws).await.is_none());
}

#[tokio::test]
async fn token_minted_by_the_cli_is_accepted_and_its_grants_reported() {
    let dir = std::env::temp_dir().join(format!("sb-token-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("switchboard.toml");
    std::fs::write(
        &cfg,
        "[auth]\nkeys = { prod = \"0123456789abcdef-prod\" }\n",
    )
    .unwrap();
    let out = Command::new(bin())
        .args(["token", "-c"])
        .arg(&cfg)
        .args([
            "--room",
            "cli",
            "--identity",
            "zoe",
            "--name",
            "Zoe",
            "--can-publish",
            "false",
        ])
        .output()
        .expect("run token");
    assert!(out.status.success());
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();

    let s = serve(&[], &["-c", cfg.to_str().unwrap()]);
    // No dev endpoint outside dev mode.
    assert_eq!(
        http_get(&format!("{}/dev/token?room=x&name=y", s.addr))
            .await
            .0,
        404
    );
    let mut ws = connect(&s.addr).await;
    send(
        &mut ws,
        json!({"type": "join", "token": token, "protocol": 1}),
    )
    .await;
    let joined = recv_type(&mut ws, "joined").await;
    assert_eq!(joined["participant"]["identity"], "zoe");
    assert_eq!(joined["participant"]["name"], "Zoe");
    assert_eq!(joined["permissions"]["can_publish"], false);
    assert_eq!(joined["room"]["name"], "cli");

    // A dev token is refused by a server with real keys.
    let dev = Command::new(bin())
        .args(["token", "--room", "cli", "--identity", "eve"])
        .output()
        .expect("run token");
    let dev = String::from_utf8(dev.stdout).unwrap().trim().to_string();
    let mut ws = connect(&s.addr).await;
    send(
        &mut ws,
        json!({"type": "join", "token": dev, "protocol": 1}),
    )
    .await;
    assert_eq!(recv(&mut ws).await.unwrap()["code"], "unauthorized");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn dev_mode_refuses_a_non_loopback_listener() {
    let out = Command::new(bin())
        .args(["serve", "--http", "0.0.0.0:0", "--no-turn"])
        .output()
        .expect("run serve");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refusing to listen on 0.0.0.0"), "{err}");
}

#[tokio::test]
async fn health_metrics_and_embedded_app_are_served() {
    let s = serve(&[], &[]);
    assert_eq!(
        http_get(&format!("{}/healthz", s.addr)).await,
        (200, "ok".into())
    );
    let (st, page) = http_get(&format!("{}/room/demo", s.addr)).await;
    assert_eq!(st, 200);
    assert!(page.contains("<html") || page.contains("<!doctype") || page.contains("<!DOCTYPE"));
    let (_a, _) = join(&s.addr, "m", "a").await;
    let (st, metrics) = http_get(&format!("{}/metrics", s.addr)).await;
    assert_eq!(st, 200);
    assert!(metrics.contains("signal_participants 1"), "{metrics}");
}

#[test]
fn self_signed_tls_serves_https() {
    let s = serve(&[], &["--tls", "self-signed"]);
    assert!(s.addr.starts_with("https://"), "{}", s.addr);
    // curl is the independent TLS client here; -k because the certificate is self-signed.
    let out = Command::new("curl")
        .args([
            "-sk",
            "--max-time",
            "10",
            "-w",
            " %{ssl_verify_result} %{http_version}",
        ])
        .arg(format!("{}/healthz", s.addr))
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("ok "), "{text}");
    // Plain HTTP on the TLS port is not served.
    let plain = Command::new("curl")
        .args(["-s", "--max-time", "5"])
        .arg(format!("{}/healthz", s.addr.replace("https://", "http://")))
        .output()
        .expect("curl runs");
    assert_ne!(String::from_utf8_lossy(&plain.stdout), "ok");
}

#[tokio::test]
async fn sdp_the_sfu_cannot_take_gets_an_error_and_a_good_offer_still_gets_its_answer() {
    let s = serve(&[("SWITCHBOARD_ROOMS_DEFAULT_MODE", "sfu")], &[]);
    let (mut a, joined) = join(&s.addr, "s1", "a").await;
    assert_eq!(joined["room"]["mode"], "sfu");
    for (sdp, what) in [
        ("garbage", "sfu: bad SDP offer"),
        ("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n", "sfu: "),
    ] {
        send(&mut a, json!({"type": "offer", "to": "sfu", "sdp": sdp})).await;
        let err = recv_type(&mut a, "error").await;
        assert_eq!(err["code"], "bad_request", "{err}");
        let msg = err["message"].as_str().unwrap_or_default();
        assert!(msg.starts_with(what), "{sdp:?}: {msg}");
    }
    // The socket stays open, and a real offer (str0m's: one audio m-line) is answered.
    send(&mut a, json!({"type": "ping", "ts": "still here"})).await;
    assert_eq!(recv_type(&mut a, "pong").await["ts"], "still here");
    let mut rtc = str0m::Rtc::builder().build(std::time::Instant::now());
    let addr = "127.0.0.1:9".parse().expect("addr");
    rtc.add_local_candidate(str0m::Candidate::host(addr, "udp").expect("candidate"));
    let mut api = rtc.sdp_api();
    api.add_media(
        str0m::media::MediaKind::Audio,
        str0m::media::Direction::SendOnly,
        None,
        None,
        None,
    );
    let (offer, _) = api.apply().expect("an offer");
    send(
        &mut a,
        json!({"type": "offer", "to": "sfu", "sdp": offer.to_sdp_string()}),
    )
    .await;
    let answer = recv_type(&mut a, "answer").await;
    assert_eq!(answer["from"], "sfu");
    assert!(answer["sdp"]
        .as_str()
        .unwrap_or_default()
        .contains("m=audio"));
}
