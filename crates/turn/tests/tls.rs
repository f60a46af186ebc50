//! TURN over TLS: rcgen self-signed certificate, driven by `turnutils_uclient -S`.

mod common;
use common::{assert_clean, have, uclient_pairs};
use turn::{TurnConfig, TurnServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uclient_over_tls() {
    if !have("turnutils_uclient") {
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
        tls_listening_port: 0,
        cert: Some(cert.clone()),
        pkey: Some(key.clone()),
        ..common::loopback_config(1)
    };
    let s = TurnServer::start(cfg).await.expect("start");
    assert_eq!(s.tls_addrs().len(), 1);
    let port = s.tls_addrs()[0].port().to_string();
    let r = uclient_pairs(
        &port,
        2,
        50,
        100,
        &["-S", "-t", "-c"],
        &["-u", "alice", "-w", "secret"],
    )
    .await;
    assert_clean(&r, 100);
    s.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
