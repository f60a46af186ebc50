//! Full ICE through TURN: two native clients in relay-only mode (the browser's `iceTransportPolicy: "relay"`)
//! exchange chat and a file
//! - through `switchboard serve`'s own TURN server over UDP (its `/metrics` `turn_relayed_bytes_total` grows),
//! - through it over TCP, after TURN over UDP failed (port unreachable),
//! - through it over TLS only (`turns:`, a self-signed certificate trusted with `extra_ca_pem`; the same
//!   server refused without that CA), after UDP and TCP failed,
//! - through coturn (`turnserver`, Debian `coturn`), given as an ICE server override;
//!
//! A relayed call outlives its TURN credentials: with a 10 s credential lifetime the server pushes fresh ones
//! (`ice_servers`) and the clients keep relaying for over 3× that lifetime, never refused as expired; with
//! 5 s credentials and no renewal the relay dies (the control).
//!
//! And a server-reflexive candidate is gathered from a STUN Binding answer.
//!
//! Needs the binary: `SWITCHBOARD_BIN`, else `<workspace>/target/debug/switchboard`. The coturn test is skipped
//! (with a message) when `turnserver` is not installed.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use client::{ChannelKind, IceServer, Room, RoomEvent, RoomOptions, ServerUrl};
use hmac::Mac;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

const SECRET: &str = "relay-test-secret";

fn server_bin() -> PathBuf {
    if let Ok(p) = std::env::var("SWITCHBOARD_BIN") {
        return p.into();
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    target.join("debug/switchboard")
}

struct Server {
    proc: Child,
    url: String,
    turn_udp: Option<String>,
    turn_tcp: Option<String>,
    turn_tls: Option<String>,
}

/// `switchboard serve` with TURN on a free port and a known TURN secret.
async fn start_server(with_turn: bool) -> Server {
    start_server_with(with_turn, &[]).await
}

/// [`start_server`] with extra `SWITCHBOARD_*` environment settings.
async fn start_server_with(with_turn: bool, env: &[(&str, String)]) -> Server {
    let bin = server_bin();
    assert!(
        bin.exists(),
        "server binary not found at {} (cargo build -p switchboard, or set SWITCHBOARD_BIN)",
        bin.display()
    );
    let mut args = vec!["serve", "--http", "127.0.0.1:0", "--sfu-port", "0"];
    if with_turn {
        args.extend(["--turn-port", "0"]);
    } else {
        args.push("--no-turn");
    }
    let mut child = Command::new(&bin)
        .args(&args)
        .env("NO_COLOR", "1")
        .env("SWITCHBOARD_TURN_STATIC_AUTH_SECRET", SECRET)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn switchboard serve");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let (mut turn_udp, mut turn_tcp, mut turn_tls) = (None, None, None);
    let url = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(line)) = lines.next_line().await {
            let after = |tag: &str| {
                line.find(tag)
                    .map(|i| line[i + tag.len()..].trim().to_string())
            };
            if let Some(a) = after("listening turn-udp ") {
                turn_udp = Some(a);
            } else if let Some(a) = after("listening turn-tcp ") {
                turn_tcp = Some(a);
            } else if let Some(a) = after("listening turn-tls ") {
                turn_tls = Some(a);
            } else if let Some(u) = after("listening http ") {
                return u;
            }
        }
        panic!("server exited before listening");
    })
    .await
    .expect("server did not print its listening line");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Server {
        proc: child,
        url,
        turn_udp,
        turn_tcp,
        turn_tls,
    }
}

/// TURN REST credentials (coturn `use-auth-secret`): `expiry:user`, base64(HMAC-SHA1(secret, username)).
fn rest_credentials(secret: &str, user: &str) -> (String, String) {
    rest_credentials_for(secret, user, 3600)
}

/// [`rest_credentials`] valid for `ttl` seconds.
fn rest_credentials_for(secret: &str, user: &str, ttl: u64) -> (String, String) {
    let expiry = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + ttl;
    let username = format!("{expiry}:{user}");
    let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()).expect("hmac key");
    mac.update(username.as_bytes());
    let password = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    (username, password)
}

fn turn_server(urls: Vec<String>) -> IceServer {
    let (username, credential) = rest_credentials(SECRET, "native-test");
    IceServer {
        urls,
        username: Some(username),
        credential: Some(credential),
    }
}

async fn join(server: &ServerUrl, room: &str, name: &str, opts: RoomOptions) -> Room {
    let (token, _) = client::dev_token(server, room, name)
        .await
        .expect("dev token");
    Room::connect_with(&server.ws, &token, opts)
        .await
        .expect("join")
}

fn relay_opts(ice: Option<Vec<IceServer>>) -> RoomOptions {
    RoomOptions {
        host_ips: Some(vec!["127.0.0.1".parse().expect("ip")]),
        relay_only: true,
        ice_servers_override: ice,
        ..Default::default()
    }
}

/// Plain HTTP GET of `/metrics`; the sum of the `turn_relayed_bytes_total` samples.
async fn relayed_bytes(http: &str) -> f64 {
    metric(http, "turn_relayed_bytes_total").await
}

/// Plain HTTP GET of `/metrics`; the sum of the samples of `name`.
async fn metric(http: &str, name: &str) -> f64 {
    let authority = http.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(authority)
        .await
        .expect("connect /metrics");
    let req = format!("GET /metrics HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut body = String::new();
    s.read_to_string(&mut body).await.expect("read");
    body.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with([' ', '{']))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The value of the `/metrics` sample `name{...label...}` (0 when absent).
async fn metric_with(http: &str, name: &str, label: &str) -> f64 {
    let authority = http.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(authority)
        .await
        .expect("connect /metrics");
    let req = format!("GET /metrics HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut body = String::new();
    s.read_to_string(&mut body).await.expect("read");
    body.lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Waits for an event matching `f`, failing after `secs`.
async fn wait_for<T>(
    room: &Room,
    secs: u64,
    what: &str,
    mut f: impl FnMut(RoomEvent) -> Option<T>,
) -> T {
    tokio::time::timeout(Duration::from_secs(secs), async {
        loop {
            let ev = room.next_event().await.expect("room closed");
            if let RoomEvent::Error { code, message } = &ev {
                eprintln!("room error {code}: {message}");
            }
            if let Some(t) = f(ev) {
                return t;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// Two relay-only clients: each gathers a relayed candidate (over `want_proto`), then chat both ways and a
/// 1 MiB file with its SHA-256 confirmed. Returns the relayed candidates.
/// Sends `data` as a file from `from` to `to` (within `secs`): the sender's delivery report must say ok; returns
/// what `to` received.
async fn send_file(
    from: &Room,
    to: &Room,
    tag: &str,
    data: &[u8],
    secs: u64,
) -> client::ReceivedFile {
    let dir = std::env::temp_dir().join(format!("sb-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let path = dir.join("payload.bin");
    std::fs::write(&path, data).expect("write payload");
    let (deliveries, received) = tokio::join!(
        tokio::time::timeout(Duration::from_secs(secs), from.send_file(&path)),
        wait_for(to, secs, "file at the receiver", |ev| match ev {
            RoomEvent::FileReceived { file, .. } => Some(file),
            _ => None,
        }),
    );
    std::fs::remove_dir_all(&dir).ok();
    let deliveries = deliveries.expect("send_file timed out").expect("send_file");
    assert!(deliveries[0].ok, "{:?}", deliveries[0]);
    received
}

async fn relay_session(
    server: &ServerUrl,
    room: &str,
    ice: Option<Vec<IceServer>>,
    want_proto: &str,
    our_turn: bool,
) -> (String, String) {
    relay_session_with(server, room, relay_opts(ice), want_proto, our_turn).await
}

/// [`relay_session`] with both clients on `opts`.
async fn relay_session_with(
    server: &ServerUrl,
    room: &str,
    opts: RoomOptions,
    want_proto: &str,
    our_turn: bool,
) -> (String, String) {
    let alice = join(server, room, "Alice", opts.clone()).await;
    let bob = join(server, room, "Bob", opts).await;
    let mut cands = Vec::new();
    for (who, r) in [("alice", &alice), ("bob", &bob)] {
        let mut relay = None;
        let mut open = false;
        tokio::time::timeout(Duration::from_secs(30), async {
            while relay.is_none() || !open {
                match r.next_event().await.expect("room closed") {
                    RoomEvent::LocalCandidate {
                        candidate,
                        relay_protocol,
                        ..
                    } => {
                        assert!(candidate.contains("typ relay"), "{who}: {candidate}");
                        assert_eq!(relay_protocol.as_deref(), Some(want_proto), "{who}");
                        relay = Some(candidate);
                    }
                    RoomEvent::ChannelOpen {
                        channel: ChannelKind::File,
                        ..
                    } => open = true,
                    RoomEvent::Error { code, message } => eprintln!("{who}: {code}: {message}"),
                    _ => {}
                }
            }
        })
        .await
        .unwrap_or_else(|_| {
            panic!("{who}: no relayed candidate / connection (relay {relay:?}, open {open})")
        });
        cands.push(relay.expect("relay"));
    }

    alice.send_chat("hi bob, via TURN").await.expect("chat");
    let text = wait_for(&bob, 10, "chat at bob", |ev| match ev {
        RoomEvent::Chat { text, .. } => Some(text),
        _ => None,
    })
    .await;
    assert_eq!(text, "hi bob, via TURN");
    bob.send_chat("hi alice").await.expect("chat");
    wait_for(&alice, 10, "chat at alice", |ev| match ev {
        RoomEvent::Chat { text, .. } => Some(text),
        _ => None,
    })
    .await;

    let data: Vec<u8> = (0..1024 * 1024 + 17)
        .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    let received = send_file(&alice, &bob, &format!("relay-test-{room}"), &data, 60).await;
    assert!(received.checksum_ok);
    assert_eq!(received.data, data);
    if our_turn {
        let active = metric(&server.http, "turn_allocations_active").await;
        assert!(
            active >= 2.0,
            "turn_allocations_active {active} during the call"
        );
    }
    alice.leave().await;
    bob.leave().await;
    (cands.remove(0), cands.remove(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_only_through_switchboard_turn_over_udp() {
    let mut srv = start_server(true).await;
    let server = ServerUrl::parse(&srv.url).expect("url");
    let before = relayed_bytes(&server.http).await;
    // The ice_servers of `joined` (the server's own STUN/TURN), no override.
    relay_session(&server, "relay-udp", None, "udp", true).await;
    let after = relayed_bytes(&server.http).await;
    assert!(
        after - before > 2.0 * 1024.0 * 1024.0,
        "turn_relayed_bytes_total grew by {} only (before {before}, after {after})",
        after - before
    );
    // Leaving released both allocations at once (Refresh with lifetime 0), not after their lifetime.
    let mut active = f64::NAN;
    for _ in 0..50 {
        active = metric(&server.http, "turn_allocations_active").await;
        if active == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(active, 0.0, "allocations still active after leaving");
    srv.proc.kill().await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_falls_back_to_tcp_when_udp_fails() {
    let mut srv = start_server(true).await;
    let server = ServerUrl::parse(&srv.url).expect("url");
    let tcp = srv.turn_tcp.clone().expect("turn-tcp listener");
    assert!(srv.turn_udp.is_some());
    // A UDP port where nobody listens: the allocation fails (port unreachable), TCP takes over.
    let dead = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let dead_port = dead.local_addr().expect("addr").port();
    drop(dead);
    let ice = vec![turn_server(vec![
        format!("turn:127.0.0.1:{dead_port}?transport=udp"),
        format!("turn:{tcp}?transport=tcp"),
    ])];
    let before = relayed_bytes(&server.http).await;
    relay_session(&server, "relay-tcp", Some(ice), "tcp", true).await;
    let after = relayed_bytes(&server.http).await;
    assert!(
        after - before > 2.0 * 1024.0 * 1024.0,
        "{before} -> {after}"
    );
    srv.proc.kill().await.ok();
}

/// A free port for both UDP and TCP on 127.0.0.1.
fn free_port() -> u16 {
    loop {
        let u = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let port = u.local_addr().expect("addr").port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_only_through_coturn() {
    if std::process::Command::new("turnserver")
        .arg("-h")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_err()
    {
        eprintln!("SKIPPED: turnserver (coturn) is not installed");
        return;
    }
    let port = free_port();
    let port_s = port.to_string();
    let mut coturn = Command::new("turnserver")
        .args([
            "--allow-loopback-peers",
            "--no-cli",
            "-n",
            "--use-auth-secret",
            "--static-auth-secret",
            SECRET,
            "--realm",
            "test",
            "--listening-ip",
            "127.0.0.1",
            "--relay-ip",
            "127.0.0.1",
            "--no-tls",
            "--no-dtls",
            "--listening-port",
            &port_s,
            "--log-file",
            "stdout",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn turnserver");
    let stdout = coturn.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(Some(l)) = lines.next_line().await {
            if l.contains("Total General servers") || l.contains("turn server id=1 created") {
                return;
            }
        }
        panic!("turnserver exited");
    })
    .await
    .expect("turnserver did not start");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Our server without its own TURN: the only relay is coturn.
    let mut srv = start_server(false).await;
    let server = ServerUrl::parse(&srv.url).expect("url");
    let ice = vec![
        IceServer {
            urls: vec![format!("stun:127.0.0.1:{port}")],
            username: None,
            credential: None,
        },
        turn_server(vec![
            format!("turn:127.0.0.1:{port}?transport=udp"),
            format!("turn:127.0.0.1:{port}?transport=tcp"),
        ]),
    ];
    let (a, b) = relay_session(&server, "relay-coturn", Some(ice), "udp", false).await;
    assert!(
        a.contains("127.0.0.1") && b.contains("127.0.0.1"),
        "{a} / {b}"
    );
    srv.proc.kill().await.ok();
    coturn.kill().await.ok();
}

/// A STUN server that answers every Binding with a fixed "public" address: the client turns it into a
/// server-reflexive candidate (a real NAT is not needed to check the gathering and its reporting).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_reflexive_candidate_from_stun_binding() {
    use stun::{Class, Message, MessageType, MessageWriter, Method};
    let stun_sock = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let stun_addr = stun_sock.local_addr().expect("addr");
    let public: std::net::SocketAddr = "198.51.100.7:40000".parse().expect("addr");
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let count = answered.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        while let Ok((n, from)) = stun_sock.recv_from(&mut buf).await {
            let Ok(m) = Message::parse(&buf[..n]) else {
                continue;
            };
            if m.method() != Method::BINDING || m.class() != Class::Request {
                continue;
            }
            let mut out = Vec::new();
            let mut w = MessageWriter::new(
                &mut out,
                MessageType::new(Method::BINDING, Class::Success),
                m.transaction_id(),
            );
            w.add_xor_mapped_address(public).expect("attr");
            w.add_fingerprint().expect("fp");
            let _ = stun_sock.send_to(&out, from).await;
            count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    });
    let mut srv = start_server(false).await;
    let server = ServerUrl::parse(&srv.url).expect("url");
    let opts = RoomOptions {
        host_ips: Some(vec!["127.0.0.1".parse().expect("ip")]),
        ice_servers_override: Some(vec![IceServer {
            urls: vec![format!("stun:{stun_addr}")],
            username: None,
            credential: None,
        }]),
        ..Default::default()
    };
    let alice = join(&server, "srflx", "Alice", opts.clone()).await;
    let bob = join(&server, "srflx", "Bob", opts).await;
    for (who, r) in [("alice", &alice), ("bob", &bob)] {
        let (mut srflx, mut open) = (None, false);
        tokio::time::timeout(Duration::from_secs(20), async {
            while srflx.is_none() || !open {
                match r.next_event().await.expect("room closed") {
                    RoomEvent::LocalCandidate {
                        candidate,
                        relay_protocol,
                        ..
                    } => {
                        assert!(relay_protocol.is_none(), "{who}: {candidate}");
                        srflx = Some(candidate);
                    }
                    RoomEvent::ChannelOpen {
                        channel: ChannelKind::File,
                        ..
                    } => open = true,
                    _ => {}
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{who}: srflx {srflx:?}, open {open}"));
        let c = srflx.expect("srflx");
        assert!(
            c.contains("typ srflx") && c.contains("198.51.100.7 40000"),
            "{who}: {c}"
        );
    }
    assert!(answered.load(std::sync::atomic::Ordering::Relaxed) >= 2);
    alice.leave().await;
    bob.leave().await;
    srv.proc.kill().await.ok();
}

/// A self-signed certificate for `localhost` and 127.0.0.1, written as PEM files: (dir, cert, key).
fn self_signed_pem(tag: &str) -> (PathBuf, PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("sb-turns-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("certificate");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).expect("write cert");
    std::fs::write(&key, ck.signing_key.serialize_pem()).expect("write key");
    (dir, cert, key)
}

/// `switchboard serve` with TURN over TLS on a free port (`turn.cert`/`turn.pkey`).
async fn start_tls_server(cert: &std::path::Path, key: &std::path::Path) -> Server {
    start_server_with(
        true,
        &[
            ("SWITCHBOARD_TURN_CERT", cert.display().to_string()),
            ("SWITCHBOARD_TURN_PKEY", key.display().to_string()),
            ("SWITCHBOARD_TURN_TLS_LISTENING_PORT", "0".into()),
        ],
    )
    .await
}

/// The raw `joined` message of a fresh participant (to look at what the server advertises).
async fn raw_joined(server: &ServerUrl, room: &str) -> serde_json::Value {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let (token, _) = client::dev_token(server, room, "raw").await.expect("token");
    let (mut ws, _) = tokio_tungstenite::connect_async(&server.ws)
        .await
        .expect("ws");
    let join = serde_json::json!({"type": "join", "token": token, "protocol": 1});
    ws.send(Message::text(join.to_string()))
        .await
        .expect("send");
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("joined in time")
            .expect("socket open")
            .expect("frame");
        if let Message::Text(t) = m {
            let v: serde_json::Value = serde_json::from_str(t.as_str()).expect("json");
            if v["type"] == "joined" {
                return v;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_only_through_turns_with_a_trusted_ca_after_udp_and_tcp_fail() {
    let (dir, cert, key) = self_signed_pem("ok");
    let mut srv = start_tls_server(&cert, &key).await;
    let server = ServerUrl::parse(&srv.url).expect("url");
    let tls = srv.turn_tls.clone().expect("turn-tls listener");
    let tls_port = tls.rsplit(':').next().expect("port").to_string();

    // The server advertises TURN over TLS in `joined` when it has a certificate.
    let joined = raw_joined(&server, "turns-advert").await;
    let urls: Vec<String> = joined["ice_servers"]
        .as_array()
        .expect("ice_servers")
        .iter()
        .flat_map(|s| s["urls"].as_array().cloned().unwrap_or_default())
        .filter_map(|u| u.as_str().map(str::to_string))
        .collect();
    assert!(
        urls.contains(&format!("turns:127.0.0.1:{tls_port}?transport=tcp")),
        "{urls:?}"
    );

    // UDP and TCP TURN lead nowhere (nobody listens there): only TURN over TLS can relay. The URL names
    // `localhost`, which is the SNI and the name checked against the certificate.
    let dead = free_port();
    let ice = vec![turn_server(vec![
        format!("turn:127.0.0.1:{dead}?transport=udp"),
        format!("turn:127.0.0.1:{dead}?transport=tcp"),
        format!("turns:localhost:{tls_port}?transport=tcp"),
    ])];
    let opts = RoomOptions {
        extra_ca_pem: Some(cert.clone()),
        ..relay_opts(Some(ice))
    };
    let before = relayed_bytes(&server.http).await;
    relay_session_with(&server, "relay-tls", opts, "tls", true).await;
    let after = relayed_bytes(&server.http).await;
    assert!(
        after - before > 2.0 * 1024.0 * 1024.0,
        "{before} -> {after}"
    );
    srv.proc.kill().await.ok();
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turns_refuses_a_certificate_it_does_not_trust() {
    let (dir, cert, key) = self_signed_pem("untrusted");
    let mut srv = start_tls_server(&cert, &key).await;
    let server = ServerUrl::parse(&srv.url).expect("url");
    let tls = srv.turn_tls.clone().expect("turn-tls listener");
    let tls_port = tls.rsplit(':').next().expect("port");
    let ice = vec![turn_server(vec![format!(
        "turns:localhost:{tls_port}?transport=tcp"
    )])];
    // No extra CA: the self-signed certificate is not in the Mozilla roots.
    let alice = join(
        &server,
        "tls-untrusted",
        "Alice",
        relay_opts(Some(ice.clone())),
    )
    .await;
    let _bob = join(&server, "tls-untrusted", "Bob", relay_opts(Some(ice))).await;
    let message = wait_for(&alice, 20, "relay_failed", |ev| match ev {
        RoomEvent::Error { code, message } if code == "relay_failed" => Some(message),
        RoomEvent::LocalCandidate { candidate, .. } => {
            panic!("relayed through an untrusted server: {candidate}")
        }
        _ => None,
    })
    .await;
    assert!(message.contains("TLS handshake failed"), "{message}");
    assert_eq!(
        metric(&server.http, "turn_allocations_active").await,
        0.0,
        "an allocation was made over an untrusted connection"
    );
    srv.proc.kill().await.ok();
    std::fs::remove_dir_all(&dir).ok();
}

/// Two relay-only clients (TURN refreshed every 2 s) connected through the server's own TURN.
async fn short_credentials_call(
    server: &ServerUrl,
    room: &str,
    ice: Option<Vec<IceServer>>,
) -> (Room, Room) {
    let opts = RoomOptions {
        turn_refresh: Some(Duration::from_secs(2)),
        ..relay_opts(ice)
    };
    let alice = join(server, room, "Alice", opts.clone()).await;
    let bob = join(server, room, "Bob", opts).await;
    for (who, r) in [("alice", &alice), ("bob", &bob)] {
        wait_for(r, 30, &format!("{who}: file channel open"), |ev| match ev {
            RoomEvent::ChannelOpen {
                channel: ChannelKind::File,
                ..
            } => Some(()),
            _ => None,
        })
        .await;
    }
    (alice, bob)
}

/// Sends chat `tag-<n>` every second for `secs` seconds; returns how many of them Bob received within a
/// second of being sent (and prints the slowest delivery).
async fn chat_every_second(alice: &Room, bob: &Room, tag: &str, secs: u32) -> u32 {
    let mut got = 0;
    let mut slowest = Duration::ZERO;
    for n in 0..secs {
        let text = format!("{tag}-{n}");
        let sent = tokio::time::Instant::now();
        alice.send_chat(&text).await.expect("chat");
        let until = sent + Duration::from_secs(1);
        while let Ok(Some(ev)) = tokio::time::timeout_at(until, bob.next_event()).await {
            match ev {
                RoomEvent::Chat { text: t, .. } if t == text => {
                    got += 1;
                    slowest = slowest.max(sent.elapsed());
                }
                RoomEvent::PeerState { state, .. } => eprintln!("{tag} {n}: bob's peer {state:?}"),
                _ => {}
            }
        }
    }
    eprintln!("{tag}: {got}/{secs} chat messages within 1 s, slowest {slowest:?}");
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relayed_call_outlives_its_turn_credentials_with_renewal() {
    const TTL: u64 = 10;
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .try_init();
    }
    let mut srv = start_server_with(
        true,
        &[("SWITCHBOARD_ICE_CREDENTIAL_TTL_SECS", TTL.to_string())],
    )
    .await;
    let server = ServerUrl::parse(&srv.url).expect("url");
    let (alice, bob) = short_credentials_call(&server, "renew", None).await;
    // Over 3× the credentials' lifetime of chat, one message a second.
    let secs = 3 * TTL as u32 + 4;
    let got = chat_every_second(&alice, &bob, "renew", secs).await;
    eprintln!("chat received {got}/{secs}");
    // Past 3× the lifetime: a file still goes through the relay intact.
    let data: Vec<u8> = (0..300 * 1024u32).map(|i| (i % 251) as u8).collect();
    let received = send_file(&alice, &bob, "renew", &data, 30).await;
    assert_eq!(received.data, data);
    let pushes = metric(&server.http, "signal_ice_refreshes_total").await;
    let expired = metric_with(
        &server.http,
        "turn_auth_failures_total",
        "expired_credentials",
    )
    .await;
    eprintln!("chat received {got}/{secs}; ice_servers pushes {pushes}; expired-credential refusals {expired}");
    // Every 8 s (80 % of 10 s) to each of the two participants.
    assert!(
        pushes >= 6.0,
        "only {pushes} ice_servers pushes in {secs} s"
    );
    assert_eq!(
        expired, 0.0,
        "a TURN request went out with expired credentials"
    );
    assert!(
        got + 1 >= secs,
        "only {got} of {secs} chat messages arrived within a second"
    );
    alice.leave().await;
    bob.leave().await;
    srv.proc.kill().await.ok();
}

/// Without renewal (an override ignores the server's pushes), the same 5 s credentials: the allocation keeps
/// the credentials it was made with after they expire (as with coturn: expiry is checked when allocating), so
/// the relayed call goes on; only new allocations would be refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relayed_call_outlives_its_expired_turn_credentials_without_renewal() {
    let mut srv = start_server(true).await;
    let server = ServerUrl::parse(&srv.url).expect("url");
    let udp = srv.turn_udp.clone().expect("turn-udp listener");
    let (username, credential) = rest_credentials_for(SECRET, "short", 5);
    let ice = vec![IceServer {
        urls: vec![format!("turn:{udp}?transport=udp")],
        username: Some(username),
        credential: Some(credential),
    }];
    let (alice, bob) = short_credentials_call(&server, "no-renew", Some(ice)).await;
    let early = chat_every_second(&alice, &bob, "early", 2).await;
    assert_eq!(early, 2, "the relay did not work to begin with");
    // Past the expiry and a refresh period or two.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let late = chat_every_second(&alice, &bob, "late", 5).await;
    let expired = metric_with(
        &server.http,
        "turn_auth_failures_total",
        "expired_credentials",
    )
    .await;
    assert_eq!(
        expired, 0.0,
        "a request on the existing allocation was refused as expired"
    );
    assert!(
        late >= 4,
        "only {late} of 5 chat messages relayed after the credentials expired"
    );
    alice.leave().await;
    bob.leave().await;
    srv.proc.kill().await.ok();
}
