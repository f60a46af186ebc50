//! tokio drivers: UDP/TCP/TLS listeners, one UDP relay socket per allocation, expiry sweeper.
//!
//! The UDP relay hot path is batched: a listener or relay socket is drained with one `recvmmsg` of up
//! to [`BATCH`] datagrams, the core is locked once for the whole batch (ChannelData and peer data are
//! looked up and counted by the sans-IO core, so permissions, channel expiry, bandwidth caps and
//! metrics behave exactly as for single packets), and the results leave with one `sendmmsg` per
//! destination socket (runs of equal-size datagrams for one destination as one GSO send, see
//! `batch.rs`). A drained relay socket (fewer than `BATCH` datagrams read) clears its readiness
//! without the extra `EAGAIN` read. Buffers are allocated once per task or per worker thread, never per
//! packet.

use std::cell::RefCell;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};
use stun::{stream_frame_len, ChannelData};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::batch::{RecvBatch, SendBatch, SendScratch, BATCH};
use crate::core::{AllocId, Core, FiveTuple, Output, Transport};

/// A relay socket and the token that stops its task.
#[derive(Debug)]
pub(crate) struct Relay {
    socket: AsyncFd<std::net::UdpSocket>,
    cancel: CancellationToken,
    /// DF is set on the socket for every datagram (Allocate with DONT-FRAGMENT).
    dont_fragment: AtomicBool,
}

pub(crate) type RelayHandle = Arc<Relay>;

type BoxWriter = Box<dyn AsyncWrite + Send + Unpin>;
type StreamWriter = Arc<tokio::sync::Mutex<BoxWriter>>;

/// Where data for a client goes.
#[derive(Clone)]
enum ClientSink {
    Udp {
        socket: Arc<UdpSocket>,
        addr: SocketAddr,
    },
    Stream(StreamWriter),
}

pub(crate) struct Shared {
    core: Mutex<Core<RelayHandle>>,
    pub(crate) cancel: CancellationToken,
    /// Every UDP listener socket and its address (set once by [`spawn_all`]): the short circuit sends
    /// to a client from the listener its allocation was made on.
    listeners: OnceLock<Vec<(SocketAddr, Arc<UdpSocket>)>>,
}

impl Shared {
    pub(crate) fn new(core: Core<RelayHandle>) -> Arc<Shared> {
        Arc::new(Shared {
            core: Mutex::new(core),
            cancel: CancellationToken::new(),
            listeners: OnceLock::new(),
        })
    }
    fn core(&self) -> MutexGuard<'_, Core<RelayHandle>> {
        self.core
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
    pub(crate) fn allocation_count(&self) -> usize {
        self.core().allocation_count()
    }
    /// A UDP listener socket bound to `addr`.
    fn listener(&self, addr: SocketAddr) -> Option<&Arc<UdpSocket>> {
        self.listeners
            .get()?
            .iter()
            .find(|(a, _)| *a == addr)
            .map(|(_, s)| s)
    }
}

fn bind_relay(addr: SocketAddr, parent: &CancellationToken) -> io::Result<RelayHandle> {
    let std_sock = std::net::UdpSocket::bind(addr)?;
    std_sock.set_nonblocking(true)?;
    // SAFETY: the std socket owns its file descriptor, which stays open as long as the AsyncFd.
    let socket = unsafe { AsyncFd::register(std_sock) }.map_err(|e| e.into_parts().1)?;
    Ok(Arc::new(Relay {
        socket,
        cancel: parent.child_token(),
        dont_fragment: AtomicBool::new(false),
    }))
}

/// Set (or clear) the DF bit for datagrams sent on `sock`: IP_MTU_DISCOVER=IP_PMTUDISC_DO for IPv4,
/// IPV6_MTU_DISCOVER=IPV6_PMTUDISC_DO + IPV6_DONTFRAG for IPv6. Clearing restores PMTUDISC_WANT.
#[cfg(target_os = "linux")]
pub(crate) fn set_dont_fragment(
    sock: &impl std::os::fd::AsRawFd,
    v6: bool,
    on: bool,
) -> io::Result<()> {
    let fd = sock.as_raw_fd();
    let mode = if on {
        sockopt::PMTUDISC_DO
    } else {
        sockopt::PMTUDISC_WANT
    };
    if v6 {
        sockopt::set(fd, sockopt::IPPROTO_IPV6, sockopt::IPV6_MTU_DISCOVER, mode)?;
        sockopt::set(
            fd,
            sockopt::IPPROTO_IPV6,
            sockopt::IPV6_DONTFRAG,
            i32::from(on),
        )
    } else {
        sockopt::set(fd, sockopt::IPPROTO_IP, sockopt::IP_MTU_DISCOVER, mode)
    }
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn set_dont_fragment<T>(_sock: &T, _v6: bool, _on: bool) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "DF not supported on this platform",
    ))
}

/// Whether this platform lets us set DF on UDP sockets (probed once at start).
pub(crate) fn dont_fragment_supported() -> bool {
    std::net::UdpSocket::bind(("127.0.0.1", 0))
        .and_then(|s| set_dont_fragment(&s, false, true))
        .is_ok()
}

/// Raw setsockopt/getsockopt through the C library std already links (socket2 has no
/// IP_MTU_DISCOVER API). Linux constants.
#[cfg(target_os = "linux")]
pub(crate) mod sockopt {
    use std::ffi::{c_int, c_void};
    use std::io;

    pub const IPPROTO_IP: c_int = 0;
    pub const IPPROTO_IPV6: c_int = 41;
    pub const IP_MTU_DISCOVER: c_int = 10;
    pub const IPV6_MTU_DISCOVER: c_int = 23;
    pub const IPV6_DONTFRAG: c_int = 62;
    pub const PMTUDISC_WANT: c_int = 1;
    pub const PMTUDISC_DO: c_int = 2;

    extern "C" {
        fn setsockopt(
            fd: c_int,
            level: c_int,
            name: c_int,
            value: *const c_void,
            len: u32,
        ) -> c_int;
        #[cfg(test)]
        fn getsockopt(
            fd: c_int,
            level: c_int,
            name: c_int,
            value: *mut c_void,
            len: *mut u32,
        ) -> c_int;
    }

    pub fn set(fd: c_int, level: c_int, name: c_int, value: c_int) -> io::Result<()> {
        // SAFETY: `value` is a live c_int and the length passed is its size.
        let r = unsafe {
            setsockopt(
                fd,
                level,
                name,
                (&value as *const c_int).cast(),
                std::mem::size_of::<c_int>() as u32,
            )
        };
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    #[cfg(test)]
    pub fn get(fd: c_int, level: c_int, name: c_int) -> io::Result<c_int> {
        let mut value: c_int = 0;
        let mut len = std::mem::size_of::<c_int>() as u32;
        // SAFETY: `value`/`len` are live and `len` holds the buffer size.
        let r = unsafe { getsockopt(fd, level, name, (&mut value as *mut c_int).cast(), &mut len) };
        if r == 0 {
            Ok(value)
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

/// Bind a UDP socket with SO_REUSEPORT (so several workers can share one port).
pub(crate) fn bind_udp_reuse(addr: SocketAddr) -> io::Result<UdpSocket> {
    let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    #[cfg(unix)]
    sock.set_reuse_port(true)?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    let _ = sock.set_recv_buffer_size(4 << 20);
    let _ = sock.set_send_buffer_size(4 << 20);
    sock.bind(&addr.into())?;
    sock.set_nonblocking(true)?;
    UdpSocket::from_std(sock.into())
}

pub(crate) fn bind_tcp(addr: SocketAddr) -> io::Result<TcpListener> {
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    sock.set_reuse_address(true)?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    sock.bind(&addr.into())?;
    sock.listen(1024)?;
    sock.set_nonblocking(true)?;
    TcpListener::from_std(sock.into())
}

/// Send a datagram without a task switch when the socket buffer has room.
async fn udp_send(socket: &UdpSocket, data: &[u8], to: SocketAddr) -> io::Result<()> {
    match socket.try_send_to(data, to) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            socket.send_to(data, to).await.map(|_| ())
        }
        Err(e) => Err(e),
    }
}

/// Common handling of an [`Output`] for all client transports.
async fn dispatch(
    shared: &Arc<Shared>,
    out: Output<'_, RelayHandle>,
    reply: &[u8],
    sink: &ClientSink,
) -> io::Result<()> {
    let send_reply = match out {
        Output::None => false,
        Output::Reply => true,
        Output::Created {
            id,
            relay,
            relay2,
            dont_fragment,
        } => {
            for r in std::iter::once(&relay).chain(relay2.as_ref()) {
                if dont_fragment {
                    // The core only accepts DONT-FRAGMENT when the probe at start succeeded.
                    let v6 = r.socket.get_ref().local_addr().is_ok_and(|a| a.is_ipv6());
                    match set_dont_fragment(&r.socket, v6, true) {
                        Ok(()) => r.dont_fragment.store(true, Ordering::Relaxed),
                        Err(e) => warn!(error = %e, "could not set DF on relay socket"),
                    }
                }
            }
            if let Some(r2) = relay2 {
                // Dual allocation: the IPv6 relay lives and dies with the primary one.
                tokio::spawn(relay_task(shared.clone(), id, r2.clone(), sink.clone()));
                let primary = relay.clone();
                tokio::spawn(async move {
                    primary.cancel.cancelled().await;
                    r2.cancel.cancel();
                });
            }
            tokio::spawn(relay_task(shared.clone(), id, relay, sink.clone()));
            true
        }
        Output::Released { relay, .. } => {
            relay.cancel.cancel();
            true
        }
        Output::ToClient { client, .. } => {
            // Short circuit: `reply` is the datagram for the other allocation's UDP client.
            match shared.listener(client.server) {
                Some(socket) => {
                    if let Err(e) = udp_send(socket, reply, client.client).await {
                        debug!(client = %client.client, error = %e, "short-circuit send failed");
                        count_send_drops(1);
                    }
                }
                None => count_send_drops(1),
            }
            false
        }
        Output::ToPeer {
            relay,
            peer,
            data,
            dont_fragment,
        } => {
            // Send indication with DONT-FRAGMENT on a relay without DF: set DF for this datagram only.
            let toggle = dont_fragment && !relay.dont_fragment.load(Ordering::Relaxed);
            let v6 = peer.is_ipv6();
            if toggle {
                if let Err(e) = set_dont_fragment(&relay.socket, v6, true) {
                    debug!(error = %e, "could not set DF");
                }
            }
            let res = relay_send(&relay, data, peer).await;
            if toggle {
                let _ = set_dont_fragment(&relay.socket, v6, false);
            }
            if let Err(e) = res {
                debug!(%peer, error = %e, "relay send failed");
                metrics::counter!("turn_dropped_packets_total", "reason" => "send_error")
                    .increment(1);
            }
            false
        }
    };
    if send_reply && !reply.is_empty() {
        match sink {
            ClientSink::Udp { socket, addr } => udp_send(socket, reply, *addr).await?,
            ClientSink::Stream(w) => {
                w.lock().await.write_all(reply).await?;
            }
        }
    }
    Ok(())
}

/// Send one datagram from a relay socket, waiting for room in the socket buffer if needed.
async fn relay_send(relay: &Relay, data: &[u8], to: SocketAddr) -> io::Result<()> {
    loop {
        match relay.socket.get_ref().send_to(data, to) {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let mut guard = relay.socket.writable().await?;
                guard.clear_ready();
            }
            Err(e) => return Err(e),
        }
    }
}

/// Batches handled per wakeup before yielding to other tasks.
const BATCHES_PER_WAKEUP: usize = 8;

/// Per worker-thread scratch of the relay → client path (used synchronously, never across an await).
struct RelayScratch {
    rx: RecvBatch,
    tx: SendBatch,
}

thread_local! {
    static RELAY_SCRATCH: RefCell<Option<Box<RelayScratch>>> = const { RefCell::new(None) };
}

/// Count datagrams the kernel did not take (UDP semantics: they are dropped).
fn count_send_drops(n: usize) {
    if n > 0 {
        metrics::counter!("turn_dropped_packets_total", "reason" => "send_error")
            .increment(n as u64);
    }
}

/// Relay → UDP client, one batch: read what is queued on the relay socket, let the core encode it for
/// the client under one lock, send it all with one `sendmmsg`. Returns true when the relay socket is
/// drained.
fn relay_batch_udp(
    shared: &Shared,
    id: AllocId,
    relay: &Relay,
    client_fd: i32,
    client: SocketAddr,
) -> bool {
    RELAY_SCRATCH.with(|cell| {
        let mut slot = cell.borrow_mut();
        let sc = slot.get_or_insert_with(|| {
            Box::new(RelayScratch {
                rx: RecvBatch::new(),
                tx: SendBatch::new(crate::batch::SLOT + 64),
            })
        });
        let n = match sc.rx.recv(relay.socket.as_raw_fd()) {
            Ok(n) => n,
            Err(e) => {
                debug!(error = %e, "relay recv error");
                return true;
            }
        };
        if n == 0 {
            return true;
        }
        let now = Instant::now();
        {
            let mut core = shared.core();
            for k in 0..n {
                let (data, Some(peer)) = sc.rx.get(k) else {
                    continue;
                };
                let Some(out) = sc.tx.next_buf() else {
                    break;
                };
                if core.handle_peer(now, id, peer, data, out) {
                    sc.tx.commit(client);
                }
            }
        }
        let queued = sc.tx.len();
        match sc.tx.flush(client_fd) {
            Ok(sent) => count_send_drops(queued - sent),
            Err(e) => {
                debug!(error = %e, "send to client failed");
                count_send_drops(queued);
            }
        }
        n < BATCH
    })
}

/// Reads from one allocation's relay socket and forwards to the client.
async fn relay_task(shared: Arc<Shared>, id: AllocId, relay: RelayHandle, sink: ClientSink) {
    let cancelled = relay.cancel.cancelled();
    tokio::pin!(cancelled);
    // Stream clients (TCP/TLS) are written one frame at a time with task-owned buffers.
    let mut stream_bufs: Option<(Vec<u8>, Vec<u8>)> = None;
    loop {
        let mut guard = tokio::select! {
            biased;
            _ = &mut cancelled => break,
            r = relay.socket.readable() => match r {
                Ok(g) => g,
                Err(e) => {
                    debug!(error = %e, "relay socket error");
                    break;
                }
            },
        };
        match &sink {
            ClientSink::Udp { socket, addr } => {
                let mut drained = false;
                for _ in 0..BATCHES_PER_WAKEUP {
                    if relay_batch_udp(&shared, id, &relay, socket.as_raw_fd(), *addr) {
                        drained = true;
                        break;
                    }
                }
                if drained {
                    guard.clear_ready();
                } else {
                    drop(guard);
                    tokio::task::yield_now().await;
                }
            }
            ClientSink::Stream(w) => {
                let (buf, out) = stream_bufs
                    .get_or_insert_with(|| (vec![0u8; 65536], Vec::with_capacity(65536 + 64)));
                for _ in 0..BATCH {
                    let (n, peer) = match relay.socket.get_ref().recv_from(buf) {
                        Ok(v) => v,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            guard.clear_ready();
                            break;
                        }
                        Err(e) => {
                            debug!(error = %e, "relay recv error");
                            break;
                        }
                    };
                    let ok = shared
                        .core()
                        .handle_peer(Instant::now(), id, peer, &buf[..n], out);
                    if !ok {
                        continue;
                    }
                    if let Err(e) = w.lock().await.write_all(out).await {
                        debug!(error = %e, "send to client failed");
                        count_send_drops(1);
                    }
                }
            }
        }
    }
}

/// A ChannelData datagram the core accepted: relay it from `relay` to `peer`; the payload is bytes
/// `off..off + len` of datagram `k` of the listener's receive batch.
struct ToPeer {
    relay: RelayHandle,
    peer: SocketAddr,
    k: usize,
    off: usize,
    len: usize,
}

/// Client → peer fast path: datagrams `from..` of `rx` that are ChannelData go through the core under
/// one lock; those for a peer are queued in `pending`, those the core short-circuits to another
/// allocation's client on this listener address are encoded straight into `to_clients`. Stops at the
/// first other message (a STUN request or indication, handled by the caller one at a time) and returns
/// its index (`n` when there is none).
#[allow(clippy::too_many_arguments)]
fn client_batch(
    shared: &Shared,
    rx: &RecvBatch,
    from: usize,
    n: usize,
    local: SocketAddr,
    now: Instant,
    pending: &mut Vec<ToPeer>,
    to_clients: &mut SendBatch,
) -> usize {
    let mut core = None;
    for k in from..n {
        let (data, src) = rx.get(k);
        let Some(client) = src else {
            continue;
        };
        if !ChannelData::is_channel_data(data) {
            return k;
        }
        let core = core.get_or_insert_with(|| shared.core());
        let ft = FiveTuple {
            client,
            server: local,
            transport: Transport::Udp,
        };
        let mut no_bind = |_: SocketAddr| -> io::Result<RelayHandle> {
            Err(io::Error::other("ChannelData never allocates"))
        };
        // At most BATCH datagrams per call and `to_clients` is flushed after each call: never full.
        let Some(out) = to_clients.next_buf() else {
            count_send_drops(1);
            continue;
        };
        match core.handle_client(now, ft, data, out, &mut no_bind) {
            Output::ToPeer {
                relay, peer, data, ..
            } => {
                if let Some((off, len)) = rx.offset_in(k, data) {
                    pending.push(ToPeer {
                        relay,
                        peer,
                        k,
                        off,
                        len,
                    });
                }
            }
            Output::ToClient { client, .. } if client.server == local => {
                to_clients.commit(client.client);
            }
            Output::ToClient { client, .. } => {
                // The other allocation was made on another listening address: send from there.
                let sent = shared
                    .listener(client.server)
                    .is_some_and(|s| s.try_send_to(out, client.client).is_ok());
                if !sent {
                    count_send_drops(1);
                }
            }
            _ => {}
        }
    }
    n
}

/// Send the short-circuited datagrams queued in `to_clients` from listener socket `fd`.
fn flush_to_clients(to_clients: &mut SendBatch, fd: i32) {
    let queued = to_clients.len();
    if queued == 0 {
        return;
    }
    match to_clients.flush(fd) {
        Ok(sent) => count_send_drops(queued - sent),
        Err(e) => {
            debug!(error = %e, "short-circuit send failed");
            count_send_drops(queued);
        }
    }
}

/// Send every queued client → peer datagram, one `sendmmsg` per run of datagrams on the same relay.
fn flush_to_peers(rx: &RecvBatch, pending: &mut Vec<ToPeer>, scratch: &mut SendScratch) {
    let mut i = 0;
    while i < pending.len() {
        let relay = &pending[i].relay;
        let run = pending[i..]
            .iter()
            .take_while(|p| Arc::ptr_eq(&p.relay, relay))
            .count();
        let group = &pending[i..i + run];
        let item = |j: usize| {
            let p = &group[j];
            let (d, _) = rx.get(p.k);
            (&d[p.off..p.off + p.len], p.peer)
        };
        match scratch.send(relay.socket.as_raw_fd(), run, item) {
            Ok(sent) => count_send_drops(run - sent),
            Err(e) => {
                debug!(error = %e, "relay send failed");
                count_send_drops(run);
            }
        }
        i += run;
    }
    pending.clear();
}

/// One UDP listener worker.
pub(crate) async fn udp_loop(shared: Arc<Shared>, socket: Arc<UdpSocket>, local: SocketAddr) {
    let mut rx = RecvBatch::new();
    let mut scratch = SendScratch::new();
    let mut pending: Vec<ToPeer> = Vec::with_capacity(BATCH);
    let mut to_clients = SendBatch::new(crate::batch::SLOT + 64);
    let mut out = Vec::with_capacity(2048);
    let cancelled = shared.cancel.cancelled();
    tokio::pin!(cancelled);
    let sink = ClientSink::Udp {
        socket: socket.clone(),
        addr: local,
    };
    loop {
        tokio::select! {
            biased;
            _ = &mut cancelled => break,
            r = socket.readable() => {
                if let Err(e) = r {
                    warn!(error = %e, "udp listener error");
                    break;
                }
            }
        }
        for _ in 0..BATCHES_PER_WAKEUP {
            // try_io clears the readiness when the closure reports WouldBlock: a batch shorter than
            // BATCH means the queue was drained, so report it that way (keeping the datagrams) and
            // save the read that would only return EAGAIN.
            let mut n = 0;
            let r = socket.try_io(tokio::io::Interest::READABLE, || {
                n = rx.recv(socket.as_raw_fd())?;
                if n < BATCH {
                    Err(io::ErrorKind::WouldBlock.into())
                } else {
                    Ok(())
                }
            });
            if let Err(e) = r {
                if e.kind() != io::ErrorKind::WouldBlock {
                    debug!(error = %e, "udp recv error");
                    break;
                }
            }
            if n == 0 {
                break;
            }
            let now = Instant::now();
            let mut k = 0;
            while k < n {
                k = client_batch(
                    &shared,
                    &rx,
                    k,
                    n,
                    local,
                    now,
                    &mut pending,
                    &mut to_clients,
                );
                flush_to_peers(&rx, &mut pending, &mut scratch);
                flush_to_clients(&mut to_clients, socket.as_raw_fd());
                if k >= n {
                    break;
                }
                // A STUN message: the full (slow) path, one at a time.
                let (data, src) = rx.get(k);
                k += 1;
                let Some(from) = src else {
                    continue;
                };
                let ft = FiveTuple {
                    client: from,
                    server: local,
                    transport: Transport::Udp,
                };
                let cancel = &shared.cancel;
                let action =
                    shared
                        .core()
                        .handle_client(Instant::now(), ft, data, &mut out, &mut |addr| {
                            bind_relay(addr, cancel)
                        });
                let ClientSink::Udp { socket, .. } = &sink else {
                    continue;
                };
                let reply_sink = ClientSink::Udp {
                    socket: socket.clone(),
                    addr: from,
                };
                if let Err(e) = dispatch(&shared, action, &out, &reply_sink).await {
                    debug!(error = %e, client = %from, "udp send failed");
                }
            }
            if n < BATCH {
                break; // drained, readiness cleared
            }
        }
    }
}

/// TCP accept loop (plain or TLS).
pub(crate) async fn tcp_accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let local = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => {
            warn!(error = %e, "tcp listener has no local address");
            return;
        }
    };
    loop {
        let (stream, client) = tokio::select! {
            _ = shared.cancel.cancelled() => break,
            r = listener.accept() => match r {
                Ok(v) => v,
                Err(e) => {
                    debug!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => stream_conn(shared, stream, client, local, Transport::Tcp).await,
                Some(acceptor) => {
                    let hs = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream))
                        .await;
                    match hs {
                        Ok(Ok(s)) => stream_conn(shared, s, client, local, Transport::Tls).await,
                        Ok(Err(e)) => debug!(%client, error = %e, "TLS handshake failed"),
                        Err(_) => debug!(%client, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
}

async fn stream_conn<S>(
    shared: Arc<Shared>,
    stream: S,
    client: SocketAddr,
    local: SocketAddr,
    transport: Transport,
) where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (mut rd, wr) = tokio::io::split(stream);
    let boxed: BoxWriter = Box::new(wr);
    let sink = ClientSink::Stream(Arc::new(tokio::sync::Mutex::new(boxed)));
    let ft = FiveTuple {
        client,
        server: local,
        transport,
    };
    let mut rbuf = vec![0u8; 2 * 65600];
    let mut out = Vec::with_capacity(2048);
    let mut filled = 0usize;
    'conn: loop {
        let n = tokio::select! {
            _ = shared.cancel.cancelled() => break,
            r = rd.read(&mut rbuf[filled..]) => match r {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            },
        };
        filled += n;
        let mut start = 0;
        loop {
            let frame_len = match stream_frame_len(&rbuf[start..filled]) {
                Ok(Some(len)) if filled - start >= len => len,
                Ok(_) => break,
                Err(e) => {
                    debug!(%client, error = %e, "closing stream: not STUN/ChannelData");
                    metrics::counter!("turn_dropped_packets_total", "reason" => "malformed")
                        .increment(1);
                    break 'conn;
                }
            };
            let frame = &rbuf[start..start + frame_len];
            let cancel = &shared.cancel;
            let action =
                shared
                    .core()
                    .handle_client(Instant::now(), ft, frame, &mut out, &mut |addr| {
                        bind_relay(addr, cancel)
                    });
            if let Err(e) = dispatch(&shared, action, &out, &sink).await {
                debug!(%client, error = %e, "stream write failed");
                break 'conn;
            }
            start += frame_len;
        }
        rbuf.copy_within(start..filled, 0);
        filled -= start;
    }
    if let Some((_, relay)) = shared.core().remove_five_tuple(&ft) {
        relay.cancel.cancel();
    }
}

/// Periodically expires allocations, permissions and channels.
pub(crate) async fn sweeper(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = shared.cancel.cancelled() => break,
            _ = tick.tick() => {}
        }
        let gone = shared.core().tick(Instant::now());
        for (_, relay) in gone {
            relay.cancel.cancel();
        }
    }
}

/// Bind `relay_threads` UDP sockets sharing `addr` (port 0 → pick one) and a TCP listener on the same port.
pub(crate) fn bind_listeners(
    ip: IpAddr,
    port: u16,
    threads: usize,
) -> io::Result<(Vec<UdpSocket>, TcpListener)> {
    let mut last_err = None;
    for _ in 0..20 {
        let first = bind_udp_reuse(SocketAddr::new(ip, port))?;
        let actual = first.local_addr()?;
        let tcp = match bind_tcp(actual) {
            Ok(t) => t,
            Err(e) if port == 0 => {
                last_err = Some(e);
                continue;
            }
            Err(e) => return Err(e),
        };
        let mut socks = vec![first];
        for _ in 1..threads.max(1) {
            socks.push(bind_udp_reuse(actual)?);
        }
        return Ok((socks, tcp));
    }
    Err(last_err.unwrap_or_else(|| io::Error::other("could not bind UDP and TCP on one port")))
}

pub(crate) fn spawn_all(
    shared: &Arc<Shared>,
    udp: Vec<(Vec<UdpSocket>, SocketAddr)>,
    tcp: Vec<TcpListener>,
    tls: Vec<(TcpListener, tokio_rustls::TlsAcceptor)>,
) -> Vec<JoinHandle<()>> {
    let mut tasks = Vec::new();
    let listeners: Vec<(SocketAddr, Arc<UdpSocket>)> = udp
        .into_iter()
        .flat_map(|(socks, local)| socks.into_iter().map(move |s| (local, Arc::new(s))))
        .collect();
    // Known before any datagram is handled.
    let _ = shared.listeners.set(listeners.clone());
    for (local, s) in listeners {
        tasks.push(tokio::spawn(udp_loop(shared.clone(), s, local)));
    }
    for l in tcp {
        tasks.push(tokio::spawn(tcp_accept_loop(shared.clone(), l, None)));
    }
    for (l, acc) in tls {
        tasks.push(tokio::spawn(tcp_accept_loop(shared.clone(), l, Some(acc))));
    }
    tasks.push(tokio::spawn(sweeper(shared.clone())));
    tasks
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn dont_fragment_sets_pmtudisc_do() {
        for (addr, v6) in [("127.0.0.1:0", false), ("[::1]:0", true)] {
            let Ok(s) = std::net::UdpSocket::bind(addr) else {
                continue; // no IPv6 on this host
            };
            use std::os::fd::AsRawFd;
            let (level, name) = if v6 {
                (sockopt::IPPROTO_IPV6, sockopt::IPV6_MTU_DISCOVER)
            } else {
                (sockopt::IPPROTO_IP, sockopt::IP_MTU_DISCOVER)
            };
            let get = || sockopt::get(s.as_raw_fd(), level, name).expect("getsockopt");
            assert_ne!(get(), sockopt::PMTUDISC_DO);
            set_dont_fragment(&s, v6, true).expect("set DF");
            assert_eq!(get(), sockopt::PMTUDISC_DO);
            if v6 {
                let df = sockopt::get(s.as_raw_fd(), level, sockopt::IPV6_DONTFRAG).expect("get");
                assert_eq!(df, 1);
            }
            set_dont_fragment(&s, v6, false).expect("clear DF");
            assert_eq!(get(), sockopt::PMTUDISC_WANT);
        }
        assert!(dont_fragment_supported());
    }
}
