//! Relay-to-relay short circuit, live: two allocations on one server relaying to each other get all
//! their data, in order and from the right relayed address, with `relay-short-circuit` on and off; and
//! coturn's `turnutils_uclient -y` (which pairs its clients on the same server) loses nothing in either
//! mode. The server's `turn_short_circuit_packets_total` proves which path the data took.

use std::time::Duration;

use turn::client::TurnClient;
use turn::{TurnConfig, TurnServer};

mod common;
use common::{assert_clean, have, uclient_pairs};

/// The tests of this file read one global counter: they run one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const SHORT_CIRCUITED: &str = "turn_short_circuit_packets_total{}";

fn config(short_circuit: bool) -> TurnConfig {
    TurnConfig {
        relay_short_circuit: short_circuit,
        ..common::loopback_config(2)
    }
}

/// `n` numbered messages from `from` to `to` (relayed address `dest`), read back by `to` in order.
async fn burst(from: &mut TurnClient, to: &mut TurnClient, dest: SocketAddrs, n: u32) {
    let mut buf = [0u8; 256];
    for i in 0..n {
        let mut msg = [0u8; 100];
        msg[..4].copy_from_slice(&i.to_be_bytes());
        from.send_to(&msg, dest.to).await.expect("send");
    }
    for i in 0..n {
        let (len, peer) = to
            .recv_from(&mut buf, Duration::from_secs(3))
            .await
            .unwrap_or_else(|e| panic!("message {i} of {n} missing: {e}"));
        assert_eq!(len, 100);
        assert_eq!(peer, dest.from, "arrives from the sender's relayed address");
        assert_eq!(
            u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]),
            i,
            "in order"
        );
    }
}

#[derive(Clone, Copy)]
struct SocketAddrs {
    from: std::net::SocketAddr,
    to: std::net::SocketAddr,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_allocations_relay_to_each_other_with_short_circuit_on_and_off() {
    let _serial = SERIAL.lock().await;
    let counts = common::recorder();
    for short_circuit in [true, false] {
        let s = TurnServer::start(config(short_circuit))
            .await
            .expect("start");
        let addr = s.udp_addrs()[0];
        let mut a = TurnClient::new(addr, "alice", "secret").await.expect("a");
        let mut b = TurnClient::new(addr, "alice", "secret").await.expect("b");
        let ra = a.allocate().await.expect("alloc a");
        let rb = b.allocate().await.expect("alloc b");
        let before = counts.counter(SHORT_CIRCUITED);
        let a_to_b = SocketAddrs { from: ra, to: rb };
        let b_to_a = SocketAddrs { from: rb, to: ra };

        // Permissions only: Send indications in, Data indications out.
        a.create_permission(rb).await.expect("perm a");
        b.create_permission(ra).await.expect("perm b");
        burst(&mut a, &mut b, a_to_b, 20).await;
        burst(&mut b, &mut a, b_to_a, 20).await;
        // Channels both ways: ChannelData in and out, bursts longer than one 32-datagram batch.
        a.channel_bind(rb).await.expect("bind a");
        b.channel_bind(ra).await.expect("bind b");
        for _ in 0..3 {
            burst(&mut a, &mut b, a_to_b, 64).await;
            burst(&mut b, &mut a, b_to_a, 64).await;
        }
        let short_circuited = counts.counter(SHORT_CIRCUITED) - before;
        if short_circuit {
            assert_eq!(
                short_circuited,
                2 * 20 + 6 * 64,
                "every message inside the server"
            );
        } else {
            assert_eq!(
                short_circuited, 0,
                "every message through the relay sockets"
            );
        }
        s.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uclient_pairs_on_one_server_lose_nothing_with_short_circuit_on_and_off() {
    if !have("turnutils_uclient") {
        return;
    }
    let _serial = SERIAL.lock().await;
    let counts = common::recorder();
    for short_circuit in [true, false] {
        let s = TurnServer::start(config(short_circuit))
            .await
            .expect("start");
        let port = s.udp_addrs()[0].port().to_string();
        let before = counts.counter(SHORT_CIRCUITED);
        // -y: client-to-client, each client's peer is another client's relayed address on this server.
        let r = uclient_pairs(
            &port,
            10,
            100,
            120,
            &["-c"],
            &["-u", "alice", "-w", "secret"],
        )
        .await;
        assert_clean(&r, 1000);
        let short_circuited = counts.counter(SHORT_CIRCUITED) - before;
        if short_circuit {
            assert!(
                short_circuited >= r.received,
                "{short_circuited} short-circuited, {} received",
                r.received
            );
        } else {
            assert_eq!(short_circuited, 0);
        }
        s.shutdown().await;
    }
}
