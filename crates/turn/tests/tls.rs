//! TURN over TLS: rcgen self-signed certificate, driven by `turnutils_uclient -S`.

use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;
use turn::{TurnConfig, TurnServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uclient_over_tls() {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("turnutils_uclient").is_file()))
        .unwrap_or(false);
    if !found {
        assert!(
            std::env::var_os("SWITCHBOARD_SKIP_COTURN").is_some(),
            "turnutils_uclient not installed"
        );
        return;
    }
    let dir = std::env::temp_dir().join(format!("sb-turn-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmpdir");
    let ck =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .expect("cert");
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    std::fs::write(&cert, ck.cert.pem()).expect("write cert");
    std::fs::write(&key, ck.signing_key.serialize_pem()).expect("write key");

    let cfg = TurnConfig {
        listening_ip: vec!["127.0.0.1".parse().expect("ip")],
        listening_port: 0,
        tls_listening_port: 0,
        realm: "test".into(),
        user: vec!["alice:secret".into()],
        allowed_peer_ip: vec!["127.0.0.1".into()],
        relay_threads: 1,
        cert: Some(cert.clone()),
        pkey: Some(key.clone()),
        ..TurnConfig::default()
    };
    let s = TurnServer::start(cfg).await.expect("start");
    assert_eq!(s.tls_addrs().len(), 1);
    let port = s.tls_addrs()[0].port().to_string();
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        Command::new("turnutils_uclient")
            .args([
                "-S",
                "-t",
                "-y",
                "-c",
                "-n",
                "50",
                "-m",
                "2",
                "-l",
                "100",
                "-p",
                &port,
                "-u",
                "alice",
                "-w",
                "secret",
                "127.0.0.1",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output(),
    )
    .await
    .expect("timeout")
    .expect("run uclient");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let totals = text
        .lines()
        .rev()
        .find(|l| {
            l.contains("tot_send_msgs=") && l.contains("tot_recv_msgs=") && !l.contains("msz=")
        })
        .unwrap_or_else(|| panic!("no totals:\n{text}"));
    let num = |k: &str| -> u64 {
        let i = totals.find(k).unwrap_or_else(|| panic!("{k} in {totals}")) + k.len();
        totals[i..]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|v| v.parse().ok())
            .expect("number")
    };
    let (sent, recv) = (num("tot_send_msgs="), num("tot_recv_msgs="));
    assert!(sent >= 100, "{text}");
    assert_eq!(sent, recv, "{text}");
    assert!(text.contains("Total lost packets 0 "), "{text}");
    s.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
