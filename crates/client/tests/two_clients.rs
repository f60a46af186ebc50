//! Two native clients in one room through a real `switchboard serve`: chat both ways and a file with its
//! SHA-256 confirmed. Needs the binary: `SWITCHBOARD_BIN`, else `<workspace>/target/debug/switchboard`
//! (build it with `cargo build -p switchboard`).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use client::{ChannelKind, Room, RoomEvent, RoomOptions, ServerUrl};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

fn server_bin() -> PathBuf {
    if let Ok(p) = std::env::var("SWITCHBOARD_BIN") {
        return p.into();
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    target.join("debug/switchboard")
}

async fn start_server() -> (Child, String) {
    let bin = server_bin();
    assert!(
        bin.exists(),
        "server binary not found at {} (cargo build -p switchboard, or set SWITCHBOARD_BIN)",
        bin.display()
    );
    let mut child = Command::new(&bin)
        .args([
            "serve",
            "--http",
            "127.0.0.1:0",
            "--no-turn",
            "--sfu-port",
            "0",
        ])
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn switchboard serve");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let url = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(i) = line.find("listening http ") {
                return line[i + "listening http ".len()..].trim().to_string();
            }
        }
        panic!("server exited before listening");
    })
    .await
    .expect("server did not print its listening line");
    // Keep draining stdout so the server never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, url)
}

async fn join(server: &ServerUrl, room: &str, name: &str) -> Room {
    let (token, _) = client::dev_token(server, room, name)
        .await
        .expect("dev token");
    let opts = RoomOptions {
        host_ips: Some(vec!["127.0.0.1".parse().expect("ip")]),
        ..Default::default()
    };
    Room::connect_with(&server.ws, &token, opts)
        .await
        .expect("join")
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
            if let Some(t) = f(ev) {
                return t;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_native_clients_chat_and_exchange_a_file() {
    let (mut server_proc, url) = start_server().await;
    let server = ServerUrl::parse(&url).expect("url");
    let alice = join(&server, "native-test", "Alice").await;
    let bob = join(&server, "native-test", "Bob").await;

    let file_open = |ev: RoomEvent| match ev {
        RoomEvent::ChannelOpen {
            channel: ChannelKind::File,
            participant,
        } => Some(participant),
        _ => None,
    };
    let (pa, pb) = tokio::join!(
        wait_for(&alice, 20, "alice: file channel to bob", file_open),
        wait_for(&bob, 20, "bob: file channel to alice", file_open),
    );
    assert_eq!(pa.id, bob.local_participant().id);
    assert_eq!(pb.id, alice.local_participant().id);

    // Chat both ways.
    assert_eq!(alice.send_chat("hi bob").await.expect("chat"), 1);
    let (from, text) = wait_for(&bob, 10, "chat at bob", |ev| match ev {
        RoomEvent::Chat { from, text } => Some((from, text)),
        _ => None,
    })
    .await;
    assert_eq!((from.display_name(), text.as_str()), ("Alice", "hi bob"));
    bob.send_chat("hi alice").await.expect("chat");
    let text = wait_for(&alice, 10, "chat at alice", |ev| match ev {
        RoomEvent::Chat { text, .. } => Some(text),
        _ => None,
    })
    .await;
    assert_eq!(text, "hi alice");

    // A 3 MiB + 123 bytes file (not a multiple of the chunk size) from Alice to Bob.
    let dir = std::env::temp_dir().join(format!("sb-client-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let path = dir.join("payload.bin");
    let data: Vec<u8> = (0..3 * 1024 * 1024 + 123)
        .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&path, &data).expect("write payload");
    let want = client::sha256_file(&path).expect("hash");

    let (deliveries, received) = tokio::join!(
        tokio::time::timeout(Duration::from_secs(60), alice.send_file(&path)),
        wait_for(&bob, 60, "file at bob", |ev| match ev {
            RoomEvent::FileReceived { file, .. } => Some(file),
            _ => None,
        }),
    );
    let deliveries = deliveries.expect("send_file timed out").expect("send_file");
    assert_eq!(deliveries.len(), 1);
    assert!(
        deliveries[0].ok,
        "receiver did not confirm: {:?}",
        deliveries[0]
    );
    assert_eq!(deliveries[0].sha256, want);
    assert_eq!(received.name, "payload.bin");
    assert!(received.checksum_ok);
    assert_eq!(received.sha256, want);
    assert_eq!(received.data, data);

    // Signaling drops and resumes: same session, the peer connection and its channels keep working.
    alice.drop_signaling();
    wait_for(&alice, 10, "alice reconnecting", |ev| {
        matches!(
            ev,
            RoomEvent::Signaling(client::SignalingState::Reconnecting)
        )
        .then_some(())
    })
    .await;
    wait_for(&alice, 15, "alice resumed", |ev| {
        matches!(ev, RoomEvent::Signaling(client::SignalingState::Connected)).then_some(())
    })
    .await;
    alice.send_chat("still here").await.expect("chat");
    let text = wait_for(&bob, 10, "chat after resume", |ev| match ev {
        RoomEvent::ParticipantLeft { .. } => panic!("bob saw alice leave during the resume"),
        RoomEvent::Chat { text, .. } => Some(text),
        _ => None,
    })
    .await;
    assert_eq!(text, "still here");
    assert_eq!(alice.participants().await.expect("roster").len(), 1);

    alice.leave().await;
    let left = wait_for(&bob, 10, "participant_left at bob", |ev| match ev {
        RoomEvent::ParticipantLeft {
            participant,
            reason,
        } => Some((participant, reason)),
        _ => None,
    })
    .await;
    assert_eq!(left.0.id, alice.local_participant().id);
    assert_eq!(left.1, "left");
    bob.leave().await;
    std::fs::remove_dir_all(&dir).ok();
    server_proc.kill().await.ok();
}

#[tokio::test]
async fn bad_token_and_unreachable_server_are_clear_errors() {
    let (mut server_proc, url) = start_server().await;
    let server = ServerUrl::parse(&url).expect("url");
    let err = Room::connect(&server.ws, "not-a-jwt")
        .await
        .err()
        .expect("must fail");
    assert!(
        matches!(&err, client::Error::Refused { code, .. } if code == "unauthorized"),
        "{err}"
    );
    server_proc.kill().await.ok();
    let _ = server_proc.wait().await;
    let err = Room::connect(&server.ws, "x")
        .await
        .err()
        .expect("must fail");
    assert!(matches!(err, client::Error::Unreachable { .. }), "{err}");
}
