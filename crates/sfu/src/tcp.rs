//! ICE over TCP (RFC 6544): the SFU's passive TCP candidate, for clients whose network lets no UDP out.
//!
//! Each accepted connection carries RFC 4571 framing (a 16-bit big-endian length before every STUN, DTLS, RTP or
//! RTCP packet). A reader task per connection hands whole packets to the engine ([`TcpEvent::Packet`]); the
//! engine answers through that connection's bounded outbox ([`TcpEvent::Opened`]), dropping packets when the
//! peer does not keep up (as a full UDP socket would). This is the fallback path: one buffer per packet is
//! accepted here, unlike the UDP hot path.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tracing::{debug, warn};

/// Packets queued towards one TCP client before new ones are dropped.
const OUTBOX: usize = 512;
/// A connection silent this long is closed (ICE consent checks arrive every few seconds).
const IDLE: Duration = Duration::from_secs(30);
/// Most TCP connections at once.
const MAX_CONNECTIONS: usize = 4096;

/// What the TCP side tells the engine.
pub(crate) enum TcpEvent {
    /// A client connected from this address; packets for it go into the sender.
    Opened(SocketAddr, mpsc::Sender<Vec<u8>>),
    /// One framed packet from a client.
    Packet(SocketAddr, Vec<u8>),
    /// The connection from this address is gone.
    Closed(SocketAddr),
}

/// Accepts ICE-TCP connections until the engine goes away.
pub(crate) async fn accept_loop(listener: TcpListener, events: mpsc::Sender<TcpEvent>) {
    let live = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(v) => v,
            Err(e) => {
                warn!("SFU TCP accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if events.is_closed() {
            return;
        }
        if live.load(std::sync::atomic::Ordering::Relaxed) >= MAX_CONNECTIONS {
            debug!(%peer, "too many SFU TCP connections: refused");
            continue;
        }
        let _ = stream.set_nodelay(true);
        live.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let events = events.clone();
        let live = live.clone();
        tokio::spawn(async move {
            connection(stream, peer, events).await;
            live.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        });
    }
}

async fn connection(stream: TcpStream, peer: SocketAddr, events: mpsc::Sender<TcpEvent>) {
    let (mut rd, mut wr) = stream.into_split();
    let (out_tx, mut out_rx) = mpsc::channel::<Vec<u8>>(OUTBOX);
    if events.send(TcpEvent::Opened(peer, out_tx)).await.is_err() {
        return;
    }
    let writer = tokio::spawn(async move {
        let mut buf = Vec::with_capacity(2048);
        while let Some(pkt) = out_rx.recv().await {
            let Ok(len) = u16::try_from(pkt.len()) else {
                continue;
            };
            buf.clear();
            buf.extend_from_slice(&len.to_be_bytes());
            buf.extend_from_slice(&pkt);
            if wr.write_all(&buf).await.is_err() {
                break;
            }
        }
    });
    loop {
        let mut len = [0u8; 2];
        match tokio::time::timeout(IDLE, rd.read_exact(&mut len)).await {
            Ok(Ok(_)) => {}
            _ => break,
        }
        let n = usize::from(u16::from_be_bytes(len));
        if n == 0 {
            continue;
        }
        let mut pkt = vec![0u8; n];
        match tokio::time::timeout(IDLE, rd.read_exact(&mut pkt)).await {
            Ok(Ok(_)) => {}
            _ => break,
        }
        if events.send(TcpEvent::Packet(peer, pkt)).await.is_err() {
            break;
        }
    }
    writer.abort();
    let _ = events.send(TcpEvent::Closed(peer)).await;
    debug!(%peer, "SFU TCP connection closed");
}
