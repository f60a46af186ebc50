//! The batched UDP relay path (recvmmsg/sendmmsg, one core lock per batch) keeps per-packet semantics:
//! bursts far larger than one batch arrive complete and in order, and datagrams from a peer without a
//! permission are dropped even when they share a batch with permitted ones.

use std::time::Duration;

use turn::client::TurnClient;
use turn::{TurnConfig, TurnServer};

mod common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_relayed_in_order_and_unpermitted_peer_dropped_within_batches() {
    let server = TurnServer::start(TurnConfig {
        allowed_peer_ip: vec!["127.0.0.0/8".into()],
        ..common::loopback_config(2)
    })
    .await
    .expect("start");
    let addr = server.udp_addrs()[0];
    let mut a = TurnClient::new(addr, "alice", "secret").await.expect("a");
    let mut b = TurnClient::new(addr, "alice", "secret").await.expect("b");
    let ra = a.allocate().await.expect("alloc a");
    let rb = b.allocate().await.expect("alloc b");
    a.channel_bind(rb).await.expect("bind a→b");
    b.channel_bind(ra).await.expect("bind b→a");

    // A stranger on another loopback address (no permission on b's allocation) sprays b's relay while
    // a sends bursts of 64 datagrams (two batches) through its channel; b reads each burst before the
    // next one so that no socket buffer on the way can overflow.
    let stranger = std::net::UdpSocket::bind("127.0.0.2:0").expect("bind 127.0.0.2");
    const BURST: u32 = 64;
    const N: u32 = 5 * BURST;
    let mut buf = [0u8; 64];
    let mut next = 0u32;
    for burst in 0..N / BURST {
        for i in burst * BURST..(burst + 1) * BURST {
            a.send_to(&i.to_be_bytes(), rb).await.expect("send");
            if i % 3 == 0 {
                stranger.send_to(b"intruder", rb).expect("stranger send");
            }
        }
        while next < (burst + 1) * BURST {
            let (n, from) = b
                .recv_from(&mut buf, Duration::from_secs(3))
                .await
                .unwrap_or_else(|e| panic!("message {next} of {N} missing: {e}"));
            assert_eq!(from, ra, "only a's relay may reach b");
            assert_eq!(n, 4);
            let got = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
            assert_eq!(got, next, "in order, none lost");
            next += 1;
        }
    }
    assert!(
        b.recv_from(&mut buf, Duration::from_millis(300))
            .await
            .is_err(),
        "nothing else (no intruder datagram) arrives"
    );
    server.shutdown().await;
}
