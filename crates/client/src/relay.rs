//! Sans-IO STUN Binding and TURN client (RFC 8489 / RFC 8656) for the peer connection: bytes and time in,
//! bytes to the server, relayed datagrams and events out. The peer task owns the sockets.
//!
//! One [`TurnAlloc`] is one allocation (UDP relay) reached over UDP or TCP. Peers get a channel
//! (ChannelBind, which also installs the permission) on first use; datagrams to a peer are queued until
//! its channel is bound. The allocation, channels and permissions are refreshed before they expire.
//!
//! TURN REST credentials expire. [`TurnAlloc::set_credentials`] switches to fresh ones: a Refresh with them
//! goes out at once, and if the server accepts it every later request (Refresh, ChannelBind) uses them. A
//! server that binds an allocation to the username it was created with (RFC 8656 §5; ours and coturn 4.6.1 do)
//! answers 441: the allocation then keeps its old credentials and reports
//! [`TurnEvent::RenewalRefused`] so the owner can replace it with a new allocation before they expire.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use stun::{
    long_term_key, ChannelData, Class, Message, MessageType, MessageWriter, Method, StunError,
    TransactionId, CHANNEL_MAX, CHANNEL_MIN,
};

/// Requested allocation lifetime (seconds); the server may grant less.
const ALLOC_LIFETIME: u32 = 600;
/// Channel bindings last 10 minutes and permissions 5: refresh both every 4 minutes.
const CHANNEL_REFRESH: Duration = Duration::from_secs(240);
/// Total time a request may take (retransmitting over UDP from 250 ms, doubling).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const FIRST_RTO: Duration = Duration::from_millis(250);
/// Pause before binding a channel again after a failure.
const CHANNEL_RETRY: Duration = Duration::from_secs(5);
/// Datagrams kept per peer while its channel is being bound.
const MAX_QUEUED: usize = 64;

/// Builds a STUN Binding request; returns its transaction id.
pub(crate) fn binding_request(out: &mut Vec<u8>) -> Result<TransactionId, StunError> {
    let tid = TransactionId(rand::random());
    let mut w = MessageWriter::new(out, MessageType::new(Method::BINDING, Class::Request), tid);
    w.add_fingerprint()?;
    Ok(tid)
}

/// If `buf` is a successful Binding response, its transaction id and XOR-MAPPED-ADDRESS.
pub(crate) fn binding_response(buf: &[u8]) -> Option<(TransactionId, Option<SocketAddr>)> {
    if !Message::is_stun(buf) {
        return None;
    }
    let m = Message::parse(buf).ok()?;
    if m.method() != Method::BINDING || !matches!(m.class(), Class::Success | Class::Error) {
        return None;
    }
    let addr = if m.class() == Class::Success {
        m.xor_mapped_address()
            .ok()
            .flatten()
            .or_else(|| m.mapped_address().ok().flatten())
    } else {
        None
    };
    Some((m.transaction_id(), addr))
}

/// What an allocation reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TurnEvent {
    /// The relay is ready: relayed address and our address as the server sees it.
    Allocated {
        relayed: SocketAddr,
        mapped: Option<SocketAddr>,
    },
    /// The allocation failed or was lost.
    Failed(String),
    /// The server refused to move this allocation to new credentials (441 Wrong Credentials, or another
    /// error): it keeps the old ones, which will expire — replace the allocation.
    RenewalRefused(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Allocate,
    Refresh(u32),
    ChannelBind(SocketAddr, u16),
    /// A Refresh sent with new credentials, to learn whether the server takes them.
    RenewProbe,
}

struct Txn {
    kind: Kind,
    bytes: Vec<u8>,
    started: Instant,
    resend_at: Option<Instant>,
    rto: Duration,
    auth_retries: u32,
    /// The key the request was signed with (its response is checked with it).
    key: Option<[u8; 16]>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Idle,
    Allocating,
    Allocated,
    Failed,
}

struct Channel {
    number: u16,
    bound: bool,
    pending: bool,
    refresh_at: Instant,
    queued: VecDeque<Vec<u8>>,
}

/// One TURN allocation.
pub(crate) struct TurnAlloc {
    /// Server address (for logs and for picking the local socket).
    pub server: SocketAddr,
    /// Stream transport (TCP): ChannelData is padded and nothing is retransmitted.
    stream: bool,
    username: String,
    password: String,
    realm: Option<String>,
    nonce: Option<String>,
    key: Option<[u8; 16]>,
    /// The credentials in use before [`TurnAlloc::set_credentials`], until the server accepted the new ones.
    previous: Option<(String, String, Option<[u8; 16]>)>,
    /// The server refused new credentials on this allocation: later ones are not tried on it.
    renewal_refused: bool,
    /// Refresh period of channels (and the allocation, if shorter than half its lifetime).
    refresh_every: Duration,
    state: State,
    relayed: Option<SocketAddr>,
    refresh_at: Option<Instant>,
    txns: HashMap<TransactionId, Txn>,
    channels: HashMap<SocketAddr, Channel>,
    by_number: HashMap<u16, SocketAddr>,
    next_channel: u16,
    out: VecDeque<Vec<u8>>,
    events: VecDeque<TurnEvent>,
}

impl TurnAlloc {
    pub fn new(server: SocketAddr, stream: bool, username: &str, password: &str) -> TurnAlloc {
        TurnAlloc {
            server,
            stream,
            username: username.to_string(),
            password: password.to_string(),
            realm: None,
            nonce: None,
            key: None,
            previous: None,
            renewal_refused: false,
            refresh_every: CHANNEL_REFRESH,
            state: State::Idle,
            relayed: None,
            refresh_at: None,
            txns: HashMap::new(),
            channels: HashMap::new(),
            by_number: HashMap::new(),
            next_channel: CHANNEL_MIN,
            out: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// Refreshes the allocation, its permissions and channels at least every `every` (default: channels every
    /// 4 minutes, the allocation at half its lifetime). Call before [`TurnAlloc::start`].
    pub fn set_refresh_interval(&mut self, every: Duration) {
        self.refresh_every = every.clamp(Duration::from_secs(1), CHANNEL_REFRESH);
    }

    /// Time left before the credentials in use expire, for TURN REST usernames (`<unix expiry>:<user>`).
    pub fn credentials_left(&self) -> Option<Duration> {
        let (expiry, _) = self.username.split_once(':')?;
        let expiry = std::time::UNIX_EPOCH + Duration::from_secs(expiry.parse().ok()?);
        Some(
            expiry
                .duration_since(std::time::SystemTime::now())
                .unwrap_or(Duration::ZERO),
        )
    }

    /// The username requests are signed with.
    #[cfg(test)]
    pub fn username(&self) -> &str {
        &self.username
    }

    /// Switches to fresh credentials (e.g. renewed TURN REST credentials) for the next requests. Once
    /// allocated, a Refresh with the new credentials is sent at once; if the server refuses it (441), the
    /// allocation keeps its current credentials and reports [`TurnEvent::RenewalRefused`].
    pub fn set_credentials(&mut self, username: &str, password: &str, now: Instant) {
        if (username == self.username && password == self.password)
            || self.state == State::Failed
            || self.renewal_refused
        {
            return;
        }
        let key = self
            .realm
            .as_deref()
            .map(|realm| long_term_key(username, realm, password));
        let old_user = std::mem::replace(&mut self.username, username.to_string());
        let old_pass = std::mem::replace(&mut self.password, password.to_string());
        let old_key = std::mem::replace(&mut self.key, key);
        if self.state != State::Allocated {
            // Not allocated yet: the Allocate (or its authenticated retry) uses them.
            return;
        }
        if self.previous.is_none() {
            self.previous = Some((old_user, old_pass, old_key));
        }
        self.request(Kind::RenewProbe, now, 0);
    }

    /// Back to the credentials the allocation had before [`TurnAlloc::set_credentials`].
    fn renewal_failed(&mut self, reason: String) {
        if let Some((u, p, k)) = self.previous.take() {
            self.username = u;
            self.password = p;
            self.key = k;
        }
        if !self.renewal_refused {
            self.renewal_refused = true;
            self.events.push_back(TurnEvent::RenewalRefused(reason));
        }
    }

    /// Sends the Allocate request.
    pub fn start(&mut self, now: Instant) {
        if self.state == State::Idle {
            self.state = State::Allocating;
            self.request(Kind::Allocate, now, 0);
        }
    }

    pub fn relayed(&self) -> Option<SocketAddr> {
        (self.state == State::Allocated)
            .then_some(self.relayed)
            .flatten()
    }

    pub fn is_failed(&self) -> bool {
        self.state == State::Failed
    }

    /// Bytes to send to the server.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.out.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<TurnEvent> {
        self.events.pop_front()
    }

    /// Transport to the server lost (TCP closed, socket error): the allocation is gone.
    pub fn transport_failed(&mut self, reason: &str) {
        if self.state != State::Failed {
            self.fail(format!(
                "connection to TURN server {} lost: {reason}",
                self.server
            ));
        }
    }

    fn fail(&mut self, reason: String) {
        self.state = State::Failed;
        self.txns.clear();
        self.channels.clear();
        self.by_number.clear();
        self.relayed = None;
        self.events.push_back(TurnEvent::Failed(reason));
    }

    /// Sends `data` to `peer` through the relay; binds a channel first if needed.
    pub fn send_to(&mut self, peer: SocketAddr, data: &[u8], now: Instant) {
        if self.state != State::Allocated {
            return;
        }
        if let Some(ch) = self.channels.get_mut(&peer) {
            if ch.bound {
                let mut buf = Vec::with_capacity(data.len() + 8);
                if ChannelData::encode(&mut buf, ch.number, data, self.stream).is_ok() {
                    self.out.push_back(buf);
                }
                return;
            }
            if ch.queued.len() >= MAX_QUEUED {
                ch.queued.pop_front();
            }
            ch.queued.push_back(data.to_vec());
            return;
        }
        if self.next_channel > CHANNEL_MAX {
            tracing::debug!(%peer, "out of TURN channels, datagram dropped");
            return;
        }
        let number = self.next_channel;
        self.next_channel += 1;
        let mut queued = VecDeque::new();
        queued.push_back(data.to_vec());
        self.channels.insert(
            peer,
            Channel {
                number,
                bound: false,
                pending: true,
                refresh_at: now + self.refresh_every,
                queued,
            },
        );
        self.by_number.insert(number, peer);
        self.request(Kind::ChannelBind(peer, number), now, 0);
    }

    /// Handles bytes from the server. Relayed data is returned as `(peer, payload)`.
    pub fn handle_input(&mut self, buf: &[u8], now: Instant) -> Option<(SocketAddr, Vec<u8>)> {
        if ChannelData::is_channel_data(buf) {
            let cd = ChannelData::parse(buf).ok()?;
            let peer = *self.by_number.get(&cd.channel)?;
            return Some((peer, cd.data.to_vec()));
        }
        let m = Message::parse(buf).ok()?;
        match m.class() {
            Class::Indication if m.method() == Method::DATA => {
                let peer = m.xor_peer_address().ok()??;
                Some((peer, m.data()?.to_vec()))
            }
            Class::Success | Class::Error => {
                let tid = m.transaction_id();
                let txn = self.txns.remove(&tid)?;
                self.on_response(txn, &m, now);
                None
            }
            _ => None,
        }
    }

    fn on_response(&mut self, txn: Txn, m: &stun::MessageRef<'_>, now: Instant) {
        if m.class() == Class::Error {
            let (code, reason) = match m.error_code() {
                Ok(Some((c, r))) => (c, r.to_string()),
                _ => (0, "error response without ERROR-CODE".to_string()),
            };
            let renewed = self.previous.is_some() || txn.key != self.key;
            if code == 441 && txn.kind != Kind::Allocate && renewed {
                // The server keeps the allocation on the username it was created with.
                if self.previous.is_some() {
                    self.renewal_failed(format!("{code} {reason}"));
                }
                if txn.kind != Kind::RenewProbe && txn.auth_retries < 3 {
                    // Sent with the refused credentials: again with the allocation's own.
                    self.request(txn.kind, now, txn.auth_retries + 1);
                }
                return;
            }
            let can_retry =
                (code == 401 && txn.auth_retries == 0) || (code == 438 && txn.auth_retries < 2);
            if can_retry {
                if let Ok(Some(realm)) = m.realm() {
                    self.key = Some(long_term_key(&self.username, realm, &self.password));
                    self.realm = Some(realm.to_string());
                }
                if let Ok(Some(nonce)) = m.nonce() {
                    self.nonce = Some(nonce.to_string());
                }
                if self.key.is_some() && self.nonce.is_some() {
                    self.request(txn.kind, now, txn.auth_retries + 1);
                    return;
                }
            }
            self.on_failure(txn.kind, format!("{code} {reason}"), now);
            return;
        }
        if let Some(key) = &txn.key {
            if m.check_integrity(key).is_err() {
                tracing::debug!(server = %self.server, "TURN response with bad integrity ignored");
                // Put it back: the genuine response may still come.
                self.txns.insert(m.transaction_id(), txn);
                return;
            }
        }
        match txn.kind {
            Kind::Allocate => {
                let relayed = match m.xor_relayed_address() {
                    Ok(Some(a)) => a,
                    _ => {
                        self.fail("Allocate success without XOR-RELAYED-ADDRESS".into());
                        return;
                    }
                };
                let lifetime = m.lifetime().ok().flatten().unwrap_or(ALLOC_LIFETIME);
                self.relayed = Some(relayed);
                self.state = State::Allocated;
                self.schedule_refresh(lifetime, now);
                self.events.push_back(TurnEvent::Allocated {
                    relayed,
                    mapped: m.xor_mapped_address().ok().flatten(),
                });
            }
            Kind::Refresh(0) => {}
            Kind::Refresh(_) => {
                let lifetime = m.lifetime().ok().flatten().unwrap_or(ALLOC_LIFETIME);
                self.schedule_refresh(lifetime, now);
            }
            Kind::RenewProbe => {
                // The server took the new credentials: the old ones are no longer needed.
                if txn.key.is_some() && txn.key == self.key {
                    self.previous = None;
                }
                let lifetime = m.lifetime().ok().flatten().unwrap_or(ALLOC_LIFETIME);
                self.schedule_refresh(lifetime, now);
            }
            Kind::ChannelBind(peer, _) => {
                let (stream, refresh_every) = (self.stream, self.refresh_every);
                if let Some(ch) = self.channels.get_mut(&peer) {
                    ch.bound = true;
                    ch.pending = false;
                    ch.refresh_at = now + refresh_every;
                    for d in ch.queued.drain(..) {
                        let mut buf = Vec::with_capacity(d.len() + 8);
                        if ChannelData::encode(&mut buf, ch.number, &d, stream).is_ok() {
                            self.out.push_back(buf);
                        }
                    }
                }
            }
        }
    }

    fn on_failure(&mut self, kind: Kind, reason: String, now: Instant) {
        match kind {
            Kind::Allocate => {
                self.fail(format!("TURN Allocate at {} failed: {reason}", self.server))
            }
            Kind::Refresh(0) => {}
            Kind::Refresh(_) => {
                self.fail(format!("TURN Refresh at {} failed: {reason}", self.server))
            }
            Kind::RenewProbe => self.renewal_failed(reason),
            Kind::ChannelBind(peer, _) => {
                tracing::debug!(server = %self.server, %peer, %reason, "TURN ChannelBind failed");
                // Try again in a few seconds (the timer re-sends it); meanwhile a new channel queues nothing.
                if let Some(ch) = self.channels.get_mut(&peer) {
                    ch.pending = false;
                    ch.queued.clear();
                    ch.refresh_at = now + CHANNEL_RETRY;
                }
            }
        }
    }

    fn schedule_refresh(&mut self, lifetime: u32, now: Instant) {
        let half = Duration::from_secs(u64::from(lifetime.max(60)) / 2);
        self.refresh_at = Some(now + half.min(self.refresh_every));
    }

    fn request(&mut self, kind: Kind, now: Instant, auth_retries: u32) {
        let tid = TransactionId(rand::random());
        let mut bytes = Vec::with_capacity(128);
        let r = (|| -> Result<(), StunError> {
            let method = match kind {
                Kind::Allocate => Method::ALLOCATE,
                Kind::Refresh(_) | Kind::RenewProbe => Method::REFRESH,
                Kind::ChannelBind(..) => Method::CHANNEL_BIND,
            };
            let mut w =
                MessageWriter::new(&mut bytes, MessageType::new(method, Class::Request), tid);
            match kind {
                Kind::Allocate => {
                    w.add_requested_transport(17)?;
                    w.add_lifetime(ALLOC_LIFETIME)?;
                }
                Kind::Refresh(l) => w.add_lifetime(l)?,
                Kind::RenewProbe => w.add_lifetime(ALLOC_LIFETIME)?,
                Kind::ChannelBind(peer, number) => {
                    w.add_channel_number(number)?;
                    w.add_xor_peer_address(peer)?;
                }
            }
            if let (Some(realm), Some(nonce), Some(key)) = (&self.realm, &self.nonce, &self.key) {
                w.add_username(&self.username)?;
                w.add_realm(realm)?;
                w.add_nonce(nonce)?;
                w.add_message_integrity(key)?;
            }
            w.add_fingerprint()?;
            Ok(())
        })();
        if let Err(e) = r {
            self.on_failure(kind, format!("cannot encode request: {e}"), now);
            return;
        }
        self.out.push_back(bytes.clone());
        self.txns.insert(
            tid,
            Txn {
                kind,
                bytes,
                started: now,
                resend_at: (!self.stream).then_some(now + FIRST_RTO),
                rto: FIRST_RTO,
                auth_retries,
                key: self
                    .key
                    .filter(|_| self.realm.is_some() && self.nonce.is_some()),
            },
        );
    }

    /// When [`TurnAlloc::handle_timeout`] wants to be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut t: Option<Instant> = self.refresh_at;
        let mut min = |x: Instant| t = Some(t.map_or(x, |t| t.min(x)));
        for txn in self.txns.values() {
            min(txn.resend_at.unwrap_or(txn.started + REQUEST_TIMEOUT));
            min(txn.started + REQUEST_TIMEOUT);
        }
        if self.state == State::Allocated {
            for ch in self.channels.values() {
                if !ch.pending {
                    min(ch.refresh_at);
                }
            }
        }
        t
    }

    /// Retransmits, times out requests, refreshes the allocation and the channels.
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut expired = Vec::new();
        for (tid, txn) in self.txns.iter_mut() {
            if now >= txn.started + REQUEST_TIMEOUT {
                expired.push(*tid);
            } else if let Some(at) = txn.resend_at {
                if now >= at {
                    self.out.push_back(txn.bytes.clone());
                    txn.rto *= 2;
                    txn.resend_at = Some(now + txn.rto);
                }
            }
        }
        for tid in expired {
            if let Some(txn) = self.txns.remove(&tid) {
                self.on_failure(txn.kind, "no response".into(), now);
            }
        }
        if self.state != State::Allocated {
            return;
        }
        if self.refresh_at.is_some_and(|t| now >= t) {
            self.refresh_at = None;
            self.request(Kind::Refresh(ALLOC_LIFETIME), now, 0);
        }
        let due: Vec<(SocketAddr, u16)> = self
            .channels
            .iter()
            .filter(|(_, c)| !c.pending && now >= c.refresh_at)
            .map(|(p, c)| (*p, c.number))
            .collect();
        let refresh_every = self.refresh_every;
        for (peer, number) in due {
            if let Some(ch) = self.channels.get_mut(&peer) {
                ch.pending = true;
                ch.refresh_at = now + refresh_every;
            }
            self.request(Kind::ChannelBind(peer, number), now, 0);
        }
    }

    /// A Refresh with lifetime 0 (deallocation), to send once when closing; no answer is awaited.
    pub fn deallocate(&mut self, now: Instant) -> Option<Vec<u8>> {
        if self.state != State::Allocated {
            return None;
        }
        self.request(Kind::Refresh(0), now, 0);
        self.state = State::Failed;
        self.out.pop_back()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal TURN server answering one allocation (for the state machine, not the wire).
    fn answer(req: &[u8], f: impl FnOnce(&mut MessageWriter<'_>, Method)) -> Vec<u8> {
        let m = Message::parse(req).unwrap();
        let mut out = Vec::new();
        let mut w = MessageWriter::new(
            &mut out,
            MessageType::new(m.method(), Class::Success),
            m.transaction_id(),
        );
        f(&mut w, m.method());
        out
    }

    #[test]
    fn allocates_after_401_binds_channel_and_relays() {
        let now = Instant::now();
        let server: SocketAddr = "127.0.0.1:3478".parse().unwrap();
        let mut a = TurnAlloc::new(server, false, "user", "pass");
        a.start(now);
        let req = a.poll_transmit().unwrap();
        let m = Message::parse(&req).unwrap();
        assert_eq!(m.method(), Method::ALLOCATE);
        assert!(m.username().unwrap().is_none());
        // 401 with realm and nonce.
        let mut e = Vec::new();
        let mut w = MessageWriter::new(
            &mut e,
            MessageType::new(Method::ALLOCATE, Class::Error),
            m.transaction_id(),
        );
        w.add_error_code(401, "Unauthorized").unwrap();
        w.add_realm("r").unwrap();
        w.add_nonce("n").unwrap();
        assert!(a.handle_input(&e, now).is_none());
        let req = a.poll_transmit().unwrap();
        let m = Message::parse(&req).unwrap();
        assert_eq!(m.username().unwrap(), Some("user"));
        let key = long_term_key("user", "r", "pass");
        m.check_integrity(&key).unwrap();
        let relayed: SocketAddr = "127.0.0.1:50000".parse().unwrap();
        let ok = answer(&req, |w, _| {
            w.add_xor_relayed_address(relayed).unwrap();
            w.add_lifetime(600).unwrap();
            w.add_message_integrity(&key).unwrap();
        });
        a.handle_input(&ok, now);
        assert_eq!(
            a.poll_event(),
            Some(TurnEvent::Allocated {
                relayed,
                mapped: None
            })
        );
        assert_eq!(a.relayed(), Some(relayed));

        // First datagram to a peer: ChannelBind, data queued until it succeeds.
        let peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        a.send_to(peer, b"hello", now);
        let bind = a.poll_transmit().unwrap();
        assert!(a.poll_transmit().is_none());
        let m = Message::parse(&bind).unwrap();
        assert_eq!(m.method(), Method::CHANNEL_BIND);
        let ok = answer(&bind, |w, _| w.add_message_integrity(&key).unwrap());
        a.handle_input(&ok, now);
        let cd = a.poll_transmit().unwrap();
        let parsed = ChannelData::parse(&cd).unwrap();
        assert_eq!(parsed.data, b"hello");
        // Data back on the channel.
        let mut back = Vec::new();
        ChannelData::encode(&mut back, parsed.channel, b"world", false).unwrap();
        assert_eq!(a.handle_input(&back, now), Some((peer, b"world".to_vec())));
        // Garbage is ignored.
        assert!(a.handle_input(&[0x40, 0, 0, 9, 1], now).is_none());
        assert!(a.handle_input(&[0xff; 3], now).is_none());

        // Refresh is due at half the lifetime.
        let t = a.poll_timeout().unwrap();
        assert!(t <= now + Duration::from_secs(300));
        a.handle_timeout(now + Duration::from_secs(300));
        let mut methods = Vec::new();
        while let Some(b) = a.poll_transmit() {
            methods.push(Message::parse(&b).unwrap().method());
        }
        assert!(methods.contains(&Method::REFRESH));
        assert!(methods.contains(&Method::CHANNEL_BIND));
    }

    /// A TURN REST server in miniature: usernames are `<expiry second>:<user>`, the password is
    /// `pw-<username>`, an expired username gets 401, and (unless `lenient`) a request on the allocation
    /// with another username than the Allocate's gets 441 (RFC 8656 §5).
    struct RestServer {
        lenient: bool,
        alloc_user: Option<String>,
        /// Error codes answered, in order.
        errors: Vec<u16>,
        /// Usernames of the authenticated requests, with their method.
        seen: Vec<(Method, String)>,
    }

    impl RestServer {
        fn new(lenient: bool) -> RestServer {
            RestServer {
                lenient,
                alloc_user: None,
                errors: Vec::new(),
                seen: Vec::new(),
            }
        }

        fn answer(&mut self, req: &[u8], now_secs: u64) -> Vec<u8> {
            let m = Message::parse(req).unwrap();
            let mut out = Vec::new();
            let error = |out: &mut Vec<u8>, code: u16| {
                let mut w = MessageWriter::new(
                    out,
                    MessageType::new(m.method(), Class::Error),
                    m.transaction_id(),
                );
                w.add_error_code(code, "x").unwrap();
                w.add_realm("r").unwrap();
                w.add_nonce("n").unwrap();
            };
            let Some(user) = m.username().unwrap() else {
                self.errors.push(401);
                error(&mut out, 401);
                return out;
            };
            self.seen.push((m.method(), user.to_string()));
            let expiry: u64 = user.split(':').next().unwrap().parse().unwrap();
            if expiry < now_secs {
                self.errors.push(401);
                error(&mut out, 401);
                return out;
            }
            let key = long_term_key(user, "r", &format!("pw-{user}"));
            m.check_integrity(&key)
                .expect("signed with the key of its username");
            if m.method() == Method::ALLOCATE {
                self.alloc_user = Some(user.to_string());
            } else if !self.lenient && self.alloc_user.as_deref() != Some(user) {
                self.errors.push(441);
                error(&mut out, 441);
                return out;
            }
            let mut w = MessageWriter::new(
                &mut out,
                MessageType::new(m.method(), Class::Success),
                m.transaction_id(),
            );
            if m.method() == Method::ALLOCATE {
                w.add_xor_relayed_address("127.0.0.1:50000".parse().unwrap())
                    .unwrap();
            }
            if matches!(m.method(), Method::ALLOCATE | Method::REFRESH) {
                w.add_lifetime(600).unwrap();
            }
            w.add_message_integrity(&key).unwrap();
            out
        }
    }

    /// Runs the allocation against `server` from `from` to `to` seconds (the clock starts at `t0`), with
    /// a peer sending through it every second; calls `at(second, alloc)` each second first.
    fn run(
        a: &mut TurnAlloc,
        server: &mut RestServer,
        t0: Instant,
        secs: std::ops::Range<u64>,
        mut at: impl FnMut(u64, &mut TurnAlloc, Instant),
    ) {
        let peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        for sec in secs {
            for tenth in 0..10 {
                let now = t0 + Duration::from_millis(sec * 1000 + tenth * 100);
                if tenth == 0 {
                    at(sec, a, now);
                    a.send_to(peer, b"media", now);
                }
                if a.poll_timeout().is_some_and(|t| t <= now) {
                    a.handle_timeout(now);
                }
                while let Some(req) = a.poll_transmit() {
                    if ChannelData::is_channel_data(&req) {
                        continue;
                    }
                    let resp = server.answer(&req, sec);
                    a.handle_input(&resp, now);
                }
            }
        }
    }

    fn rest_alloc(expiry: u64, t0: Instant) -> TurnAlloc {
        let user = format!("{expiry}:alice");
        let mut a = TurnAlloc::new(
            "127.0.0.1:3478".parse().unwrap(),
            false,
            &user,
            &format!("pw-{user}"),
        );
        a.set_refresh_interval(Duration::from_secs(2));
        a.start(t0);
        a
    }

    #[test]
    fn expired_credentials_get_401_on_refresh_without_renewal() {
        let t0 = Instant::now();
        let mut server = RestServer::new(true);
        let mut a = rest_alloc(10, t0);
        run(&mut a, &mut server, t0, 0..15, |_, _, _| {});
        assert!(server.errors.contains(&401), "{:?}", server.errors);
        assert!(a.is_failed(), "the allocation survived expired credentials");
    }

    #[test]
    fn renewed_credentials_are_used_by_later_requests_and_401_after_expiry_is_not_hit() {
        let t0 = Instant::now();
        let mut server = RestServer::new(true);
        let mut a = rest_alloc(10, t0);
        // Renewed at 80 % of each 10 s period: 8 s, 16 s, 24 s.
        run(&mut a, &mut server, t0, 0..31, |sec, a, now| {
            if sec > 0 && sec % 8 == 0 {
                let user = format!("{}:alice", sec + 10);
                a.set_credentials(&user, &format!("pw-{user}"), now);
            }
        });
        assert!(!a.is_failed());
        // Only the unauthenticated first Allocate was challenged.
        assert_eq!(server.errors, vec![401], "{:?}", server.seen);
        assert_eq!(a.username(), "34:alice");
        let late: Vec<&(Method, String)> = server.seen.iter().rev().take(4).collect();
        assert!(
            late.iter()
                .any(|(m, u)| *m == Method::REFRESH && u == "34:alice")
                && late
                    .iter()
                    .any(|(m, u)| *m == Method::CHANNEL_BIND && u == "34:alice"),
            "{late:?}"
        );
        assert!(a
            .poll_event()
            .is_some_and(|e| matches!(e, TurnEvent::Allocated { .. })));
        assert_eq!(a.poll_event(), None, "no failure, no refused renewal");
    }

    #[test]
    fn a_server_refusing_new_credentials_441_keeps_the_old_ones_and_reports_it() {
        let t0 = Instant::now();
        let mut server = RestServer::new(false);
        let mut a = rest_alloc(100, t0);
        run(&mut a, &mut server, t0, 0..12, |sec, a, now| {
            if sec == 4 {
                a.set_credentials("200:alice", "pw-200:alice", now);
            }
        });
        // The probe (and a channel refresh sent at the same moment) got 441; nothing else failed.
        assert!(
            server.errors.len() >= 2
                && server.errors[0] == 401
                && server.errors[1..].iter().all(|&c| c == 441),
            "{:?}",
            server.errors
        );
        assert!(
            !a.is_failed(),
            "a refused renewal must not lose the allocation"
        );
        assert_eq!(
            a.username(),
            "100:alice",
            "back on the allocation's credentials"
        );
        let events: Vec<TurnEvent> = std::iter::from_fn(|| a.poll_event()).collect();
        assert!(
            matches!(&events[..], [TurnEvent::Allocated { .. }, TurnEvent::RenewalRefused(r)] if r.starts_with("441")),
            "{events:?}"
        );
        // Requests after the refusal (every 2 s) went out with the old username and succeeded.
        let (m, u) = server.seen.last().unwrap();
        assert!(*m != Method::ALLOCATE && u == "100:alice", "{m:?} {u}");
    }

    #[test]
    fn times_out_and_fails() {
        let now = Instant::now();
        let mut a = TurnAlloc::new("127.0.0.1:9".parse().unwrap(), false, "u", "p");
        a.start(now);
        assert!(a.poll_transmit().is_some());
        a.handle_timeout(now + Duration::from_millis(300));
        assert!(a.poll_transmit().is_some(), "retransmitted");
        a.handle_timeout(now + REQUEST_TIMEOUT);
        assert!(matches!(a.poll_event(), Some(TurnEvent::Failed(_))));
        assert!(a.is_failed());
    }

    #[test]
    fn binding_roundtrip() {
        let mut out = Vec::new();
        let tid = binding_request(&mut out).unwrap();
        let mapped: SocketAddr = "203.0.113.7:4242".parse().unwrap();
        let resp = answer(&out, |w, _| w.add_xor_mapped_address(mapped).unwrap());
        assert_eq!(binding_response(&resp), Some((tid, Some(mapped))));
        assert_eq!(binding_response(b"not stun at all, definitely"), None);
    }
}
