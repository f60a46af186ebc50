//! Selective forwarding unit (SFU) on str0m, and WHIP/WHEP endpoints.
//!
//! CONTRACT (used by the `switchboard` binary; the SFU work fills in the bodies and keeps these signatures):
//! - [`SfuConfig`]: settings (`[sfu]` in the config file).
//! - [`Sfu::start`]: binds the media UDP port and spawns the SFU's tasks on the current tokio runtime.
//! - [`Sfu`] implements [`signal::MediaServer`]: the signaling hub hands it the `to: "sfu"` negotiation of
//!   participants of `sfu` rooms.
//! - [`Sfu::router`]: WHIP (`POST /whip/{room}`) and WHEP (`POST /whep/{room}`) endpoints, merged into the
//!   HTTP app by the binary.
//!
//! Architecture: one UDP socket carries every participant's media; one tokio task (the `engine` module) owns
//! every str0m `Rtc` (sans-IO) and routes each datagram in O(1) (remote address → client, learned from the
//! ICE ufrag of the first STUN request). The server side is ICE-lite. Media is forwarded per RTP packet
//! (str0m's RTP mode) as soon as it arrives; payloads are reference counted (`Arc<[u8]>`), so forwarding one
//! packet to N subscribers copies no media bytes (a VP9 packet whose picture ids are rewritten: one copy per
//! distinct rewrite; VP8's are patched as str0m serializes), and each subscriber's sequence numbers, timestamps
//! and VP8/VP9 picture ids are rewritten so it sees one continuous stream across simulcast layer switches.
//! When each client wants attention next (its `Rtc`'s timeout, an offer coming due) is kept in a min-heap
//! (`deadlines`), so a wake-up costs the clients due, not the whole server.
//!
//! Track attribution: every forwarded m-line carries `a=msid:<publisher stream id> <participant id>.<n>`,
//! so a subscriber knows which participant a track belongs to (the stream id is the publisher's own,
//! which keeps `metadata.streams` meaningful on the receiving side).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use tokio::sync::mpsc;

mod data;
mod deadlines;
mod engine;
mod keyframe;
mod sdp;
mod simulcast;
mod stun;
mod tcp;
mod udp;
mod vp9;
mod whip;

pub use stun::stun_local_ufrag;

/// The default media port (`sfu.udp-port`).
pub const DEFAULT_UDP_PORT: u16 = 7882;

/// SFU settings.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct SfuConfig {
    /// Run the SFU at all.
    pub enabled: bool,
    /// Address to bind the media UDP socket to.
    pub listen_ip: IpAddr,
    /// The one UDP port carrying every participant's media (0 = pick a free one).
    pub udp_port: u16,
    /// Addresses advertised as host candidates (default: `listen-ip`, when it is not unspecified).
    pub public_ip: Vec<IpAddr>,
    /// ICE over TCP (RFC 6544): also listen on TCP (the UDP port's number, else a free one) and advertise a
    /// passive TCP candidate, for clients whose network lets no UDP out.
    pub ice_tcp: bool,
    /// How each subscriber's downlink is estimated to cap its simulcast layers ([`BandwidthEstimation`]).
    pub bandwidth_estimation: BandwidthEstimation,
    /// In rooms with more participants than this, silent audio frames (RFC 6464 level below -75 dBov) are not
    /// forwarded; 0 forwards everything.
    pub drop_silent_audio_above: usize,
    /// A participant whose media path has been down this long (seconds) after it was up, or a WHIP/WHEP session
    /// whose path is down or never came up, is removed from the SFU: its tracks end for the others and its
    /// state is freed. A participant's SDK can offer again later.
    pub media_timeout_secs: u64,
    /// Merge consecutive datagrams to one address (e.g. a subscriber's retransmissions) into one UDP GSO send
    /// (Linux `UDP_SEGMENT`); falls back by itself when the kernel refuses it.
    pub udp_gso: bool,
    /// When many subscribers have packets to send at once (a large fan-out), poll half of them on a second
    /// thread (SRTP and sends on two cores). Off, or on a single core: one thread does it all.
    pub parallel_fan_out: bool,
}

impl Default for SfuConfig {
    fn default() -> Self {
        SfuConfig {
            enabled: true,
            listen_ip: IpAddr::from([127, 0, 0, 1]),
            udp_port: DEFAULT_UDP_PORT,
            public_ip: Vec::new(),
            ice_tcp: true,
            bandwidth_estimation: BandwidthEstimation::Loss,
            drop_silent_audio_above: 8,
            media_timeout_secs: 30,
            udp_gso: true,
            parallel_fan_out: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_engine_task_is_reported_with_its_message() {
        let rx = watch_task(tokio::spawn(async {
            tokio::task::yield_now().await;
            panic!("boom at packet 7");
        }));
        let mut rx2 = rx.clone();
        let why = rx2
            .wait_for(Option::is_some)
            .await
            .expect("reported")
            .clone();
        assert_eq!(
            why.as_deref(),
            Some("the engine panicked: boom at packet 7")
        );
        let running = watch_task(tokio::spawn(std::future::pending::<()>()));
        let mut ended = watch_task(tokio::spawn(async {}));
        assert!(
            ended.changed().await.is_err(),
            "a task that ends normally is no failure"
        );
        assert!(ended.borrow().is_none());
        assert!(running.borrow().is_none(), "a running task is not reported");
    }
}

/// How the SFU estimates a subscriber's downlink, which caps the simulcast layers it forwards to it
/// (`sfu.bandwidth-estimation`). In a config file: `"loss"`, `"twcc"` or `"off"`; `true` means `"loss"`,
/// `false` means `"off"`.
///
/// ```
/// use sfu::{BandwidthEstimation, SfuConfig};
/// let c: SfuConfig = serde_json::from_str(r#"{"bandwidth-estimation": "twcc"}"#).unwrap();
/// assert_eq!(c.bandwidth_estimation, BandwidthEstimation::Twcc);
/// let c: SfuConfig = serde_json::from_str(r#"{"bandwidth-estimation": false}"#).unwrap();
/// assert_eq!(c.bandwidth_estimation, BandwidthEstimation::Off);
/// assert!(serde_json::from_str::<SfuConfig>(r#"{"bandwidth-estimation": "gcc"}"#).is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BandwidthEstimation {
    /// Forward what each subscriber asks for, whatever its link.
    Off,
    /// Once a second, from the loss in the subscriber's RTCP receiver reports and the bytes sent to it,
    /// bounded by REMB when the browser sends one. Cheap: nothing per packet.
    Loss,
    /// Send-side GoogCC (str0m's) on the subscriber's transport-wide congestion control feedback (TWCC,
    /// draft-holmer-rmcat-transport-wide-cc-extensions): delay- and loss-based, updated several times a second,
    /// probing with padding for the next simulcast layer up while the subscriber gets a lower one than it asks for.
    /// Forwarded media is not paced (the publisher paced it). Bounded by REMB too. Finds a lifted limit in
    /// seconds rather than `Loss`'s tens of seconds, at ~1.3x the CPU per forwarded packet.
    Twcc,
}

impl<'de> serde::Deserialize<'de> for BandwidthEstimation {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bool(bool),
            Name(String),
        }
        match Raw::deserialize(d)? {
            Raw::Bool(true) => Ok(BandwidthEstimation::Loss),
            Raw::Bool(false) => Ok(BandwidthEstimation::Off),
            Raw::Name(n) => match n.as_str() {
                "loss" => Ok(BandwidthEstimation::Loss),
                "twcc" => Ok(BandwidthEstimation::Twcc),
                "off" => Ok(BandwidthEstimation::Off),
                other => Err(serde::de::Error::custom(format!(
                    "bandwidth-estimation must be \"loss\", \"twcc\" or \"off\" (or true/false), not {other:?}"
                ))),
            },
        }
    }
}

/// Errors starting the SFU.
#[derive(Debug, thiserror::Error)]
pub enum SfuError {
    #[error("invalid SFU configuration: {0}")]
    Config(String),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// Send and receive buffer asked for the media socket (Linux caps it at `net.core.{w,r}mem_max`).
const SOCKET_BUFFER: usize = 8 * 1024 * 1024;

/// Fan-out sends one frame to every subscriber at once (~6 datagrams of a 1.5 Mbit/s frame × N subscribers)
/// through this one socket, and sends are non-blocking: with the default ~208 KiB send buffer, everything past
/// ~100 queued datagrams was dropped (81 % loss at 200 subscribers in `bench/sfu.sh`).
fn socket_buffers(socket: &tokio::net::UdpSocket) {
    let s = socket2::SockRef::from(socket);
    let _ = s.set_send_buffer_size(SOCKET_BUFFER);
    let _ = s.set_recv_buffer_size(SOCKET_BUFFER);
    let (snd, rcv) = (
        s.send_buffer_size().unwrap_or(0),
        s.recv_buffer_size().unwrap_or(0),
    );
    if snd < SOCKET_BUFFER || rcv < SOCKET_BUFFER {
        tracing::info!(
            snd,
            rcv,
            "SFU socket buffers capped by net.core.wmem_max/rmem_max: raise them for large rooms"
        );
    }
}

/// Watches a spawned task: the receiver turns `Some(reason)` if it panics (with the panic's message) or is
/// cancelled; it stays `None` if the task ends normally.
fn watch_task(task: tokio::task::JoinHandle<()>) -> tokio::sync::watch::Receiver<Option<String>> {
    let (tx, rx) = tokio::sync::watch::channel(None);
    tokio::spawn(async move {
        let why = match task.await {
            Ok(()) => return,
            Err(e) if e.is_panic() => {
                let p = e.into_panic();
                let msg = p
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_string())
                    .or_else(|| p.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic".to_string());
                tracing::error!("the SFU engine panicked: {msg}");
                format!("the engine panicked: {msg}")
            }
            Err(e) => format!("the engine was cancelled: {e}"),
        };
        let _ = tx.send(Some(why));
    });
    rx
}

/// A running SFU.
pub struct Sfu {
    udp: SocketAddr,
    tcp: Option<SocketAddr>,
    tx: mpsc::UnboundedSender<engine::Command>,
    /// Why the engine stopped, once it has (`None` while it runs).
    stopped: tokio::sync::watch::Receiver<Option<String>>,
}

impl Sfu {
    /// Bind the media socket and start.
    pub async fn start(config: SfuConfig) -> Result<std::sync::Arc<Sfu>, SfuError> {
        let public: Vec<IpAddr> = if config.public_ip.is_empty() {
            if config.listen_ip.is_unspecified() {
                return Err(SfuError::Config(
                    "listen-ip is unspecified: set public-ip to the address(es) clients reach this server on"
                        .into(),
                ));
            }
            vec![config.listen_ip]
        } else {
            config.public_ip.clone()
        };
        if config.media_timeout_secs == 0 {
            return Err(SfuError::Config(
                "media-timeout-secs must be at least 1".into(),
            ));
        }
        if let Some(bad) = public.iter().find(|ip| ip.is_unspecified()) {
            return Err(SfuError::Config(format!(
                "public-ip {bad} is not an address clients can reach"
            )));
        }
        let wanted = SocketAddr::new(config.listen_ip, config.udp_port);
        let socket = match tokio::net::UdpSocket::bind(wanted).await {
            Ok(s) => s,
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrInUse
                    && config.udp_port == DEFAULT_UDP_PORT =>
            {
                // Candidates carry the real port, so clients do not care; only firewall rules would.
                tracing::warn!(%wanted, "the default SFU port is in use (another switchboard?): using a free port");
                tokio::net::UdpSocket::bind(SocketAddr::new(config.listen_ip, 0)).await?
            }
            Err(e) => return Err(e.into()),
        };
        let udp = socket.local_addr()?;
        socket_buffers(&socket);
        let candidates: Vec<SocketAddr> = public
            .iter()
            .map(|ip| SocketAddr::new(*ip, udp.port()))
            .collect();
        let (tx, rx) = mpsc::unbounded_channel();
        let mut tcp = None;
        let mut tcp_addr = None;
        if config.ice_tcp {
            let listener =
                match tokio::net::TcpListener::bind(SocketAddr::new(config.listen_ip, udp.port()))
                    .await
                {
                    Ok(l) => Ok(l),
                    Err(_) => {
                        tokio::net::TcpListener::bind(SocketAddr::new(config.listen_ip, 0)).await
                    }
                };
            match listener.and_then(|l| Ok((l.local_addr()?, l))) {
                Ok((addr, listener)) => {
                    let (ev_tx, ev_rx) = mpsc::channel(4096);
                    tokio::spawn(tcp::accept_loop(listener, ev_tx));
                    tcp = Some((addr.port(), ev_rx));
                    tcp_addr = Some(addr);
                }
                Err(e) => tracing::warn!("SFU ICE-TCP disabled: cannot listen on TCP: {e}"),
            }
        }
        let engine = engine::Engine::new(socket, udp, candidates, rx, &config, tcp)
            .map_err(SfuError::Config)?;
        let stopped = watch_task(tokio::spawn(engine.run()));
        tracing::info!(%udp, tcp = ?tcp_addr, "SFU started");
        Ok(Arc::new(Sfu {
            udp,
            tcp: tcp_addr,
            tx,
            stopped,
        }))
    }

    /// Resolves if the SFU's engine fails (a bug: it panicked), with the reason; never if it runs or stops as
    /// asked. A server should exit then, so that its supervisor restarts it, rather than run on without its
    /// media plane.
    ///
    /// ```no_run
    /// # async fn f(sfu: std::sync::Arc<sfu::Sfu>) {
    /// let why = sfu.failed().await;
    /// eprintln!("the SFU failed: {why}");
    /// std::process::exit(1);
    /// # }
    /// ```
    pub async fn failed(&self) -> String {
        let mut rx = self.stopped.clone();
        let why = rx
            .wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|w| w.clone());
        match why {
            Some(why) => why,
            // It stopped as asked (the server shuts down): no failure.
            None => std::future::pending().await,
        }
    }

    /// The bound media UDP address.
    pub fn udp_addr(&self) -> SocketAddr {
        self.udp
    }

    /// The ICE-TCP listening address (`ice-tcp`), if it is on.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp
    }

    /// WHIP/WHEP routes. `verify` checks a bearer token and returns its claims.
    pub fn router(self: &std::sync::Arc<Self>, keys: signal::KeySet) -> axum::Router {
        whip::router(self.tx.clone(), keys)
    }

    fn command(&self, cmd: engine::Command) {
        if self.tx.send(cmd).is_err() {
            tracing::error!("the SFU engine has stopped; dropping a command");
        }
    }
}

impl signal::MediaServer for Sfu {
    fn join(
        &self,
        room: &str,
        participant: &str,
        permissions: signal::protocol::Permissions,
        sink: signal::MediaSink,
    ) {
        self.command(engine::Command::Join {
            room: room.to_owned(),
            participant: participant.to_owned(),
            perms: permissions,
            sink,
        });
    }
    fn signal(&self, room: &str, participant: &str, msg: signal::MediaSignal) {
        self.command(engine::Command::Signal {
            room: room.to_owned(),
            participant: participant.to_owned(),
            msg,
        });
    }
    fn leave(&self, room: &str, participant: &str) {
        self.command(engine::Command::Leave {
            room: room.to_owned(),
            participant: participant.to_owned(),
        });
    }
}
