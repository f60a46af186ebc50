//! Sans-IO TURN server core: allocations keyed by 5-tuple, permissions, channels, nonces,
//! long-term authentication, quotas and peer policy. Bytes and time in, bytes and actions out.
//!
//! The core never touches a socket. Relay sockets are created through a `bind` callback that returns an
//! opaque handle `R`, which the core stores in the allocation and hands back when data must leave through
//! that relay.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use metrics::{Counter, Gauge};
use sha1::Sha1;
use stun::{
    attr_type, long_term_key, long_term_key_sha256, AddressFamily, ChannelData, Class, Message,
    MessageRef, MessageType, MessageWriter, Method, StunError, TransactionId, CHANNEL_MAX_ACCEPTED,
    CHANNEL_MIN, PASSWORD_ALGORITHM_MD5, PASSWORD_ALGORITHM_SHA256,
};
use tracing::{debug, info};

use crate::policy::PeerPolicy;

/// Value of SOFTWARE in our responses.
pub const SOFTWARE: &str = "Switchboard TURN";
/// REQUESTED-TRANSPORT value for UDP.
pub const PROTO_UDP: u8 = 17;

/// Transport between client and server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

/// Client address, server address and transport: the key of an allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FiveTuple {
    pub client: SocketAddr,
    pub server: SocketAddr,
    pub transport: Transport,
}

/// Allocation identifier (stable for the life of the allocation).
pub type AllocId = u64;

/// Core settings (already validated and resolved by the driver).
#[derive(Debug, Clone)]
pub struct CoreConfig {
    pub realm: String,
    /// Static users: name → long-term key (MD5 password algorithm).
    pub users: HashMap<String, [u8; 16]>,
    /// Static users: name → long-term key with the SHA-256 password algorithm (RFC 8489 §9.2.2).
    pub users_sha256: HashMap<String, [u8; 32]>,
    /// TURN REST shared secret.
    pub auth_secret: Option<String>,
    pub policy: PeerPolicy,
    pub relay_v4: Option<IpAddr>,
    pub relay_v6: Option<IpAddr>,
    pub min_port: u16,
    pub max_port: u16,
    pub user_quota: u32,
    pub total_quota: u32,
    /// Per-allocation bandwidth cap in bytes/s (0 = none).
    pub max_bps: u64,
    pub nonce_lifetime: Duration,
    pub default_lifetime: Duration,
    pub max_lifetime: Duration,
    pub permission_lifetime: Duration,
    pub channel_lifetime: Duration,
    /// Whether the driver can send relayed datagrams with the DF bit set (DONT-FRAGMENT, RFC 8656
    /// §7.2). When false an Allocate carrying DONT-FRAGMENT is answered 420.
    pub dont_fragment: bool,
    /// Relay-to-relay short circuit: data an allocation relays to another allocation's relayed address
    /// on this server is handed to that allocation directly ([`Output::ToClient`]) instead of leaving
    /// through one relay socket and arriving on the other. Same checks, same accounting.
    pub relay_short_circuit: bool,
}

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            realm: "switchboard".into(),
            users: HashMap::new(),
            users_sha256: HashMap::new(),
            auth_secret: None,
            policy: PeerPolicy::default(),
            relay_v4: Some(IpAddr::from([127, 0, 0, 1])),
            relay_v6: None,
            min_port: 49152,
            max_port: 65535,
            user_quota: 0,
            total_quota: 0,
            max_bps: 0,
            nonce_lifetime: Duration::from_secs(600),
            default_lifetime: Duration::from_secs(600),
            max_lifetime: Duration::from_secs(3600),
            permission_lifetime: Duration::from_secs(300),
            channel_lifetime: Duration::from_secs(600),
            dont_fragment: cfg!(target_os = "linux"),
            relay_short_circuit: true,
        }
    }
}

impl CoreConfig {
    /// Add a static user (`name:password`).
    pub fn add_user(&mut self, spec: &str) -> Result<(), String> {
        let (name, pass) = spec
            .split_once(':')
            .ok_or_else(|| format!("user {spec:?} is not name:password"))?;
        if name.is_empty() {
            return Err(format!("user {spec:?} has an empty name"));
        }
        let key = long_term_key(name, &self.realm, pass);
        self.users.insert(name.to_string(), key);
        let key = long_term_key_sha256(name, &self.realm, pass);
        self.users_sha256.insert(name.to_string(), key);
        Ok(())
    }
}

/// What the driver must do after [`Core::handle_client`]. When a variant says "reply", the response to
/// send back to the client on the same 5-tuple is in the `out` buffer.
#[derive(Debug)]
pub enum Output<'a, R> {
    /// Nothing to send (dropped or consumed).
    None,
    /// Send `out` to the client.
    Reply,
    /// Send `out` to the client and start relaying for the new allocation. When `dont_fragment` is
    /// set, every datagram leaving `relay` must carry DF (the client sent DONT-FRAGMENT).
    /// `relay2` is the IPv6 relay of a dual allocation (ADDITIONAL-ADDRESS-FAMILY): it must also be
    /// read (data for allocation `id`) and it lives exactly as long as `relay` (only `relay` is
    /// reported by `Released`, [`Core::tick`] and [`Core::remove_five_tuple`]).
    Created {
        id: AllocId,
        relay: R,
        relay2: Option<R>,
        dont_fragment: bool,
    },
    /// Send `out` to the client; the allocation is gone, stop its relay.
    Released { id: AllocId, relay: R },
    /// Send `data` from the allocation's relay to `peer` (with DF when `dont_fragment`: a Send
    /// indication carried DONT-FRAGMENT).
    ToPeer {
        relay: R,
        peer: SocketAddr,
        data: &'a [u8],
        dont_fragment: bool,
    },
    /// Relay-to-relay short circuit ([`CoreConfig::relay_short_circuit`]): the peer was the relayed
    /// address of allocation `id` on this server, which accepted the data as if it had arrived on its
    /// relay. `out` holds the ChannelData or Data indication for that allocation's client: send it from
    /// the UDP listener bound to `client.server` to `client.client` (only UDP clients are short-circuited).
    ToClient { id: AllocId, client: FiveTuple },
}

struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn allow(&mut self, rate: u64, n: usize, now: Instant) -> bool {
        if rate == 0 {
            return true;
        }
        let rate = rate as f64;
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * rate).min(rate);
        if self.tokens >= n as f64 {
            self.tokens -= n as f64;
            true
        } else {
            false
        }
    }
}

struct Allocation<R> {
    id: AllocId,
    ft: FiveTuple,
    relay_addr: SocketAddr,
    relay: R,
    /// Second relay of a dual allocation (IPv6 next to the IPv4 `relay`).
    relay2: Option<(SocketAddr, R)>,
    username: String,
    alloc_tid: TransactionId,
    lifetime: u32,
    expires: Instant,
    perms: HashMap<IpAddr, Instant>,
    channels: HashMap<u16, (SocketAddr, Instant)>,
    peer_channels: HashMap<SocketAddr, u16>,
    bucket: Bucket,
}

impl<R> Allocation<R> {
    /// The relay whose family matches `peer`.
    fn relay_for(&self, peer: &SocketAddr) -> Option<&R> {
        if family_of(peer) == family_of(&self.relay_addr) {
            return Some(&self.relay);
        }
        self.relay2
            .as_ref()
            .filter(|(a, _)| family_of(a) == family_of(peer))
            .map(|(_, r)| r)
    }
    /// The relayed address whose family matches `peer` (the source address a peer sees).
    fn relay_addr_for(&self, peer: &SocketAddr) -> Option<SocketAddr> {
        if family_of(peer) == family_of(&self.relay_addr) {
            return Some(self.relay_addr);
        }
        self.relay2_addr()
            .filter(|a| family_of(a) == family_of(peer))
    }
    fn relay2_addr(&self) -> Option<SocketAddr> {
        self.relay2.as_ref().map(|(a, _)| *a)
    }
    fn permitted(&self, ip: IpAddr, now: Instant) -> bool {
        self.perms.get(&ip).is_some_and(|exp| *exp > now)
    }
}

struct PortPool {
    min: u16,
    used: Vec<bool>,
    next: usize,
}

impl PortPool {
    fn new(min: u16, max: u16) -> Self {
        let n = usize::from(max.saturating_sub(min)) + 1;
        PortPool {
            min,
            used: vec![false; n],
            next: rand::random::<u32>() as usize % n,
        }
    }
    fn take(&mut self, even: bool) -> Option<u16> {
        let n = self.used.len();
        for i in 0..n {
            let idx = (self.next + i) % n;
            let port = self.min as usize + idx;
            if !self.used[idx] && (!even || port & 1 == 0) {
                self.used[idx] = true;
                self.next = (idx + 1) % n;
                return u16::try_from(port).ok();
            }
        }
        None
    }
    /// An even port whose successor is also free (EVEN-PORT with the R bit).
    fn take_pair(&mut self) -> Option<u16> {
        let n = self.used.len();
        for i in 0..n {
            let idx = (self.next + i) % n;
            let port = self.min as usize + idx;
            if port & 1 == 0 && idx + 1 < n && !self.used[idx] && !self.used[idx + 1] {
                self.used[idx] = true;
                self.used[idx + 1] = true;
                self.next = (idx + 2) % n;
                return u16::try_from(port).ok();
            }
        }
        None
    }
    fn release(&mut self, port: u16) {
        if let Some(slot) = port
            .checked_sub(self.min)
            .and_then(|i| self.used.get_mut(usize::from(i)))
        {
            *slot = false;
        }
    }
}

struct Metrics {
    active: Gauge,
    client_to_peer: Counter,
    peer_to_client: Counter,
    short_circuit: Counter,
}

impl Metrics {
    fn new() -> Self {
        Metrics {
            active: metrics::gauge!("turn_allocations_active"),
            client_to_peer: metrics::counter!("turn_relayed_bytes_total", "direction" => "client_to_peer"),
            peer_to_client: metrics::counter!("turn_relayed_bytes_total", "direction" => "peer_to_client"),
            short_circuit: metrics::counter!("turn_short_circuit_packets_total"),
        }
    }
}

fn dropped(reason: &'static str) {
    metrics::counter!("turn_dropped_packets_total", "reason" => reason).increment(1);
}

fn auth_failure(reason: &'static str) {
    metrics::counter!("turn_auth_failures_total", "reason" => reason).increment(1);
}

/// A relay port held for a later Allocate carrying RESERVATION-TOKEN.
struct Reservation<R> {
    addr: SocketAddr,
    relay: R,
    expires: Instant,
}

/// How long a RESERVATION-TOKEN stays valid (RFC 8656 suggests about 30 s).
const RESERVATION_LIFETIME: Duration = Duration::from_secs(30);

/// Why authentication did not succeed (the error response is already in `out`).
struct Rejected;

/// The RFC 8489 §9.2 nonce cookie: "obMatJos2" + base64 of the 24-bit security feature set with
/// bit 0 ("Password algorithms") set.
const NONCE_COOKIE: &str = "obMatJos2gAAA";

/// PASSWORD-ALGORITHMS we offer, in order of preference: SHA-256, MD5 (no parameters).
const OFFERED_ALGORITHMS: [u8; 8] = [0, 2, 0, 0, 0, 1, 0, 0];

/// A long-term key for one password algorithm, and which integrity attribute the client used
/// (responses carry the same one, RFC 8489 §9.2.4).
#[derive(Clone, Copy)]
struct Key {
    bytes: [u8; 32],
    len: usize,
    sha256_integrity: bool,
}

impl Key {
    fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// The sans-IO server state.
pub struct Core<R> {
    cfg: CoreConfig,
    epoch: Instant,
    wall_epoch: SystemTime,
    nonce_secret: [u8; 32],
    allocs: HashMap<AllocId, Allocation<R>>,
    by_ft: HashMap<FiveTuple, AllocId>,
    /// Relayed address (both families of a dual allocation) → allocation, for the short circuit.
    by_relay: HashMap<SocketAddr, AllocId>,
    per_user: HashMap<String, u32>,
    reservations: HashMap<[u8; 8], Reservation<R>>,
    ports: PortPool,
    next_id: AllocId,
    metrics: Metrics,
}

const KNOWN_REQUEST_ATTRS: &[u16] = &[
    attr_type::USERNAME,
    attr_type::REALM,
    attr_type::NONCE,
    attr_type::MESSAGE_INTEGRITY,
    attr_type::MESSAGE_INTEGRITY_SHA256,
    attr_type::ERROR_CODE,
    attr_type::LIFETIME,
    attr_type::XOR_PEER_ADDRESS,
    attr_type::DATA,
    attr_type::CHANNEL_NUMBER,
    attr_type::REQUESTED_TRANSPORT,
    attr_type::EVEN_PORT,
    attr_type::RESERVATION_TOKEN,
    attr_type::DONT_FRAGMENT,
    attr_type::ADDITIONAL_ADDRESS_FAMILY,
    attr_type::REQUESTED_ADDRESS_FAMILY,
    attr_type::PASSWORD_ALGORITHM,
    attr_type::USERHASH,
    attr_type::XOR_MAPPED_ADDRESS,
    attr_type::MAPPED_ADDRESS,
    // RFC 6062 CONNECTION-ID and coturn's ORIGIN-like extensions are not understood on purpose.
];

type HmacSha1 = Hmac<Sha1>;

fn family_of(a: &SocketAddr) -> AddressFamily {
    AddressFamily::of(&a.ip())
}

impl<R: Clone> Core<R> {
    pub fn new(cfg: CoreConfig, now: Instant) -> Self {
        let ports = PortPool::new(cfg.min_port, cfg.max_port);
        Core {
            cfg,
            epoch: now,
            wall_epoch: SystemTime::now(),
            nonce_secret: rand::random(),
            allocs: HashMap::new(),
            by_ft: HashMap::new(),
            by_relay: HashMap::new(),
            per_user: HashMap::new(),
            reservations: HashMap::new(),
            ports,
            next_id: 1,
            metrics: Metrics::new(),
        }
    }

    /// Override the wall clock corresponding to `now` given at construction (REST expiry checks).
    pub fn set_wall_epoch(&mut self, wall: SystemTime) {
        self.wall_epoch = wall;
    }

    pub fn config(&self) -> &CoreConfig {
        &self.cfg
    }

    /// Number of live allocations.
    pub fn allocation_count(&self) -> usize {
        self.allocs.len()
    }

    /// Relayed address of the allocation on `ft`, if any.
    pub fn relay_addr(&self, ft: &FiveTuple) -> Option<SocketAddr> {
        self.by_ft
            .get(ft)
            .and_then(|id| self.allocs.get(id))
            .map(|a| a.relay_addr)
    }

    /// The 5-tuple of an allocation.
    pub fn five_tuple(&self, id: AllocId) -> Option<FiveTuple> {
        self.allocs.get(&id).map(|a| a.ft)
    }

    /// Handle one datagram / stream frame from a client. `out` is cleared and receives any response.
    pub fn handle_client<'a>(
        &mut self,
        now: Instant,
        ft: FiveTuple,
        data: &'a [u8],
        out: &mut Vec<u8>,
        bind: &mut dyn FnMut(SocketAddr) -> io::Result<R>,
    ) -> Output<'a, R> {
        out.clear();
        if ChannelData::is_channel_data(data) {
            return self.client_channel_data(now, ft, data, out);
        }
        let msg = match Message::parse(data) {
            Ok(m) => m,
            Err(_) => {
                dropped("malformed");
                return Output::None;
            }
        };
        if msg.has(attr_type::FINGERPRINT) && msg.check_fingerprint().is_err() {
            dropped("fingerprint");
            return Output::None;
        }
        let res = match msg.class() {
            Class::Request => self.request(now, ft, &msg, out, bind),
            Class::Indication if msg.method() == Method::SEND => {
                Ok(self.send_indication(now, ft, &msg, out))
            }
            _ => {
                dropped("unexpected_message");
                Ok(Output::None)
            }
        };
        res.unwrap_or_else(|e| {
            debug!(error = %e, client = %ft.client, "could not encode response");
            out.clear();
            Output::None
        })
    }

    fn client_channel_data<'a>(
        &mut self,
        now: Instant,
        ft: FiveTuple,
        data: &'a [u8],
        out: &mut Vec<u8>,
    ) -> Output<'a, R> {
        let Ok(cd) = ChannelData::parse(data) else {
            dropped("malformed");
            return Output::None;
        };
        let Some(&id) = self.by_ft.get(&ft) else {
            dropped("no_allocation");
            return Output::None;
        };
        let Some(alloc) = self.allocs.get(&id) else {
            dropped("no_allocation");
            return Output::None;
        };
        let peer = match alloc.channels.get(&cd.channel) {
            Some((peer, exp)) if *exp > now => *peer,
            _ => {
                dropped("no_channel");
                return Output::None;
            }
        };
        self.relay_client_data(now, id, peer, cd.data, false, out)
    }

    fn send_indication<'a>(
        &mut self,
        now: Instant,
        ft: FiveTuple,
        msg: &MessageRef<'a>,
        out: &mut Vec<u8>,
    ) -> Output<'a, R> {
        let Some(&id) = self.by_ft.get(&ft) else {
            dropped("no_allocation");
            return Output::None;
        };
        let (Ok(Some(peer)), Some(data)) = (msg.xor_peer_address(), msg.data()) else {
            dropped("malformed");
            return Output::None;
        };
        self.relay_client_data(now, id, peer, data, msg.dont_fragment(), out)
    }

    /// Client data of allocation `id` for `peer` (from ChannelData or a Send indication): the permission,
    /// bandwidth and family checks, then either [`Output::ToPeer`] or, when `peer` is another
    /// allocation's relayed address on this server, the short circuit ([`Output::ToClient`]).
    fn relay_client_data<'a>(
        &mut self,
        now: Instant,
        id: AllocId,
        peer: SocketAddr,
        data: &'a [u8],
        dont_fragment: bool,
        out: &mut Vec<u8>,
    ) -> Output<'a, R> {
        let target = self.short_circuit_target(peer);
        let Some(alloc) = self.allocs.get_mut(&id) else {
            dropped("no_allocation");
            return Output::None;
        };
        if !alloc.permitted(peer.ip(), now) {
            dropped("no_permission");
            return Output::None;
        }
        if !alloc.bucket.allow(self.cfg.max_bps, data.len(), now) {
            dropped("bandwidth");
            return Output::None;
        }
        let Some((target, client)) = target else {
            let Some(relay) = alloc.relay_for(&peer).cloned() else {
                dropped("family_mismatch");
                return Output::None;
            };
            self.metrics.client_to_peer.increment(data.len() as u64);
            return Output::ToPeer {
                relay,
                peer,
                data,
                dont_fragment,
            };
        };
        // `peer` is allocation `target`'s relayed address: hand `data` over as if its relay socket had
        // received it from our relayed address of the same family (the target does its own checks).
        let Some(source) = alloc.relay_addr_for(&peer) else {
            dropped("family_mismatch");
            return Output::None;
        };
        self.metrics.client_to_peer.increment(data.len() as u64);
        self.metrics.short_circuit.increment(1);
        if self.handle_peer(now, target, source, data, out) {
            Output::ToClient { id: target, client }
        } else {
            Output::None
        }
    }

    /// The allocation whose relayed address is `peer` and its 5-tuple, when the short circuit is on and
    /// that allocation's client uses UDP (stream clients take the ordinary path through the sockets).
    fn short_circuit_target(&self, peer: SocketAddr) -> Option<(AllocId, FiveTuple)> {
        if !self.cfg.relay_short_circuit {
            return None;
        }
        let ip = Some(peer.ip());
        if ip != self.cfg.relay_v4 && ip != self.cfg.relay_v6 {
            return None; // not one of ours: skip the hash lookup
        }
        let id = *self.by_relay.get(&peer)?;
        let ft = self.allocs.get(&id)?.ft;
        (ft.transport == Transport::Udp).then_some((id, ft))
    }

    /// Data received on allocation `id`'s relay from `peer`: encode it for the client into `out`
    /// (ChannelData if a channel is bound, else a Data indication). Returns false if it must be dropped.
    pub fn handle_peer(
        &mut self,
        now: Instant,
        id: AllocId,
        peer: SocketAddr,
        data: &[u8],
        out: &mut Vec<u8>,
    ) -> bool {
        out.clear();
        let Some(alloc) = self.allocs.get_mut(&id) else {
            dropped("no_allocation");
            return false;
        };
        if !alloc.permitted(peer.ip(), now) {
            dropped("no_permission");
            return false;
        }
        if !alloc.bucket.allow(self.cfg.max_bps, data.len(), now) {
            dropped("bandwidth");
            return false;
        }
        let channel = alloc
            .peer_channels
            .get(&peer)
            .copied()
            .filter(|ch| alloc.channels.get(ch).is_some_and(|(_, exp)| *exp > now));
        let ok = match channel {
            Some(ch) => {
                ChannelData::encode(out, ch, data, alloc.ft.transport != Transport::Udp).is_ok()
            }
            None => {
                let tid = TransactionId(rand::random());
                let mut w =
                    MessageWriter::new(out, MessageType::new(Method::DATA, Class::Indication), tid);
                w.add_xor_peer_address(peer).is_ok() && w.add_data(data).is_ok()
            }
        };
        if !ok {
            out.clear();
            dropped("too_large");
            return false;
        }
        self.metrics.peer_to_client.increment(data.len() as u64);
        true
    }

    /// Expire allocations, permissions and channels. Returns the expired allocations' relay handles.
    pub fn tick(&mut self, now: Instant) -> Vec<(AllocId, R)> {
        let expired: Vec<AllocId> = self
            .allocs
            .values()
            .filter(|a| a.expires <= now)
            .map(|a| a.id)
            .collect();
        let mut gone = Vec::with_capacity(expired.len());
        for id in expired {
            if let Some(r) = self.remove(id, "expired") {
                gone.push((id, r));
            }
        }
        let ports = &mut self.ports;
        self.reservations.retain(|_, r| {
            let keep = r.expires > now;
            if !keep {
                ports.release(r.addr.port());
            }
            keep
        });
        for a in self.allocs.values_mut() {
            a.perms.retain(|_, exp| *exp > now);
            let before = a.channels.len();
            a.channels.retain(|_, (_, exp)| *exp > now);
            if a.channels.len() != before {
                let chans = &a.channels;
                a.peer_channels.retain(|_, ch| chans.contains_key(ch));
            }
        }
        gone
    }

    /// Remove the allocation on `ft` (e.g. its TCP connection closed).
    pub fn remove_five_tuple(&mut self, ft: &FiveTuple) -> Option<(AllocId, R)> {
        let id = *self.by_ft.get(ft)?;
        self.remove(id, "connection closed").map(|r| (id, r))
    }

    fn remove(&mut self, id: AllocId, why: &'static str) -> Option<R> {
        let a = self.allocs.remove(&id)?;
        self.by_ft.remove(&a.ft);
        self.by_relay.remove(&a.relay_addr);
        if let Some(addr2) = a.relay2_addr() {
            self.by_relay.remove(&addr2);
        }
        self.ports.release(a.relay_addr.port());
        if let Some((addr2, _)) = &a.relay2 {
            self.ports.release(addr2.port());
        }
        if let Some(n) = self.per_user.get_mut(&a.username) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_user.remove(&a.username);
            }
        }
        self.metrics.active.set(self.allocs.len() as f64);
        info!(client = %a.ft.client, relay = %a.relay_addr, user = %a.username, reason = why, "TURN allocation expired");
        Some(a.relay)
    }

    // ---- requests -------------------------------------------------------------------------------------

    fn request<'a>(
        &mut self,
        now: Instant,
        ft: FiveTuple,
        msg: &MessageRef<'a>,
        out: &mut Vec<u8>,
        bind: &mut dyn FnMut(SocketAddr) -> io::Result<R>,
    ) -> Result<Output<'a, R>, StunError> {
        let fp = msg.has(attr_type::FINGERPRINT);
        match msg.method() {
            Method::BINDING => {
                let mut w = response(out, msg, Class::Success);
                w.add_xor_mapped_address(ft.client)?;
                w.add_software(SOFTWARE)?;
                w.add_fingerprint()?;
                Ok(Output::Reply)
            }
            Method::ALLOCATE
            | Method::REFRESH
            | Method::CREATE_PERMISSION
            | Method::CHANNEL_BIND => {
                let (username, key) = match self.authenticate(now, ft, msg, out)? {
                    Ok(v) => v,
                    Err(Rejected) => return Ok(Output::Reply),
                };
                let mut unknown = [0u16; 16];
                let mut n = 0;
                for t in msg.unknown_comprehension_required(KNOWN_REQUEST_ATTRS) {
                    if n < unknown.len() && !unknown[..n].contains(&t) {
                        unknown[n] = t;
                        n += 1;
                    }
                }
                if n > 0 {
                    let mut w = error(out, msg, 420, "Unknown Attribute")?;
                    w.add_unknown_attributes(&unknown[..n])?;
                    seal(w, Some(&key), fp)?;
                    return Ok(Output::Reply);
                }
                match msg.method() {
                    Method::ALLOCATE => self.allocate(now, ft, msg, out, bind, username, key),
                    Method::REFRESH => self.refresh(now, ft, msg, out, &username, key),
                    Method::CREATE_PERMISSION => {
                        self.create_permission(now, ft, msg, out, &username, key)
                    }
                    _ => self.channel_bind(now, ft, msg, out, &username, key),
                }
            }
            _ => {
                let w = error(out, msg, 400, "Bad Request")?;
                seal(w, None, fp)?;
                Ok(Output::Reply)
            }
        }
    }

    /// Long-term credential check (RFC 8489 §9.2.4). On rejection the error response is in `out`.
    fn authenticate(
        &mut self,
        now: Instant,
        ft: FiveTuple,
        msg: &MessageRef<'_>,
        out: &mut Vec<u8>,
    ) -> Result<Result<(String, Key), Rejected>, StunError> {
        let fp = msg.has(attr_type::FINGERPRINT);
        let sha256_integrity = msg.has(attr_type::MESSAGE_INTEGRITY_SHA256);
        if !msg.has(attr_type::MESSAGE_INTEGRITY) && !sha256_integrity {
            self.challenge(now, ft, msg, out, 401, "Unauthorized")?;
            return Ok(Err(Rejected));
        }
        let (Ok(Some(username)), Ok(Some(realm)), Ok(Some(nonce))) =
            (msg.username(), msg.realm(), msg.nonce())
        else {
            auth_failure("missing_attributes");
            let w = error(out, msg, 400, "Bad Request")?;
            seal(w, None, fp)?;
            return Ok(Err(Rejected));
        };
        if !self.nonce_valid(nonce, ft.client.ip(), now) {
            auth_failure("stale_nonce");
            self.challenge(now, ft, msg, out, 438, "Stale Nonce")?;
            return Ok(Err(Rejected));
        }
        if realm != self.cfg.realm {
            auth_failure("wrong_realm");
            self.challenge(now, ft, msg, out, 401, "Unauthorized")?;
            return Ok(Err(Rejected));
        }
        // Password algorithm (RFC 8489 §9.2.4; our nonces always carry the cookie with bit 0 set):
        // neither attribute → MD5; otherwise both must be present, PASSWORD-ALGORITHMS must be what we
        // offered and PASSWORD-ALGORITHM one of them.
        let offered = msg.raw(attr_type::PASSWORD_ALGORITHMS);
        let chosen = msg.get(attr_type::PASSWORD_ALGORITHM);
        let sha256_key = match (offered, chosen) {
            (None, Ok(None)) => false,
            (Some(o), Ok(Some(stun::Attribute::PasswordAlgorithm { algorithm, params })))
                if o.value == OFFERED_ALGORITHMS
                    && params.is_empty()
                    && (algorithm == PASSWORD_ALGORITHM_MD5
                        || algorithm == PASSWORD_ALGORITHM_SHA256) =>
            {
                algorithm == PASSWORD_ALGORITHM_SHA256
            }
            _ => {
                auth_failure("bad_password_algorithm");
                seal(error(out, msg, 400, "Bad Request")?, None, fp)?;
                return Ok(Err(Rejected));
            }
        };
        // Time-limited (REST) credentials are checked for expiry when an allocation is made; the allocation then
        // lives on them (refreshes, permissions, channels), as with coturn: a browser keeps the credentials it
        // allocated with, so refusing them later would end every call longer than the credentials' lifetime.
        let existing = msg.method() != Method::ALLOCATE
            && self
                .by_ft
                .get(&ft)
                .and_then(|id| self.allocs.get(id))
                .is_some_and(|a| a.username == username);
        let Some(mut key) = self.key_for(username, sha256_key, now, existing) else {
            auth_failure("unknown_user");
            self.challenge(now, ft, msg, out, 401, "Unauthorized")?;
            return Ok(Err(Rejected));
        };
        key.sha256_integrity = sha256_integrity;
        let checked = if sha256_integrity {
            msg.check_integrity_sha256(key.as_slice())
        } else {
            msg.check_integrity(key.as_slice())
        };
        if checked.is_err() {
            auth_failure("bad_integrity");
            self.challenge(now, ft, msg, out, 401, "Unauthorized")?;
            return Ok(Err(Rejected));
        }
        Ok(Ok((username.to_string(), key)))
    }

    fn challenge(
        &self,
        now: Instant,
        ft: FiveTuple,
        msg: &MessageRef<'_>,
        out: &mut Vec<u8>,
        code: u16,
        reason: &str,
    ) -> Result<(), StunError> {
        let nonce = self.make_nonce(ft.client.ip(), now);
        let mut w = error(out, msg, code, reason)?;
        w.add_realm(&self.cfg.realm)?;
        w.add_nonce(&nonce)?;
        w.add_raw(attr_type::PASSWORD_ALGORITHMS, &OFFERED_ALGORITHMS)?;
        seal(w, None, msg.has(attr_type::FINGERPRINT))
    }

    /// Long-term key of `username` for the MD5 or SHA-256 password algorithm; time-limited credentials past
    /// their expiry only when `allow_expired` (requests on the allocation made with them).
    fn key_for(
        &self,
        username: &str,
        sha256: bool,
        now: Instant,
        allow_expired: bool,
    ) -> Option<Key> {
        let md5 = |k: &[u8; 16]| {
            let mut bytes = [0u8; 32];
            bytes[..16].copy_from_slice(k);
            Key {
                bytes,
                len: 16,
                sha256_integrity: false,
            }
        };
        let sha = |bytes: [u8; 32]| Key {
            bytes,
            len: 32,
            sha256_integrity: false,
        };
        if sha256 {
            if let Some(k) = self.cfg.users_sha256.get(username) {
                return Some(sha(*k));
            }
        } else if let Some(k) = self.cfg.users.get(username) {
            return Some(md5(k));
        }
        let secret = self.cfg.auth_secret.as_ref()?;
        let (expiry, _) = username.split_once(':').unwrap_or((username, ""));
        let expiry: u64 = expiry.parse().ok()?;
        let wall = self.wall_epoch + now.saturating_duration_since(self.epoch);
        let wall = wall.duration_since(UNIX_EPOCH).ok()?.as_secs();
        if expiry < wall && !allow_expired {
            auth_failure("expired_credentials");
            return None;
        }
        let password = rest_password(secret, username);
        Some(if sha256 {
            sha(long_term_key_sha256(username, &self.cfg.realm, &password))
        } else {
            md5(&long_term_key(username, &self.cfg.realm, &password))
        })
    }

    fn nonce_tag(&self, expiry: u64, ip: IpAddr) -> Option<[u8; 8]> {
        let mut mac = <HmacSha1 as Mac>::new_from_slice(&self.nonce_secret).ok()?;
        mac.update(&expiry.to_be_bytes());
        match ip {
            IpAddr::V4(v4) => mac.update(&v4.octets()),
            IpAddr::V6(v6) => mac.update(&v6.octets()),
        }
        let full = mac.finalize().into_bytes();
        let mut tag = [0u8; 8];
        tag.copy_from_slice(&full[..8]);
        Some(tag)
    }

    /// Stateless nonce: cookie + hex(expiry in ms since the core started) + hex(HMAC(secret, expiry || client IP)).
    fn make_nonce(&self, ip: IpAddr, now: Instant) -> String {
        let expiry = (now.saturating_duration_since(self.epoch) + self.cfg.nonce_lifetime)
            .as_millis() as u64;
        let tag = self.nonce_tag(expiry, ip).unwrap_or_default();
        let mut s = format!("{NONCE_COOKIE}{expiry:016x}");
        for b in tag {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }

    fn nonce_valid(&self, nonce: &str, ip: IpAddr, now: Instant) -> bool {
        let Some(nonce) = nonce.strip_prefix(NONCE_COOKIE) else {
            return false;
        };
        if nonce.len() != 32 || !nonce.is_ascii() {
            return false;
        }
        let Ok(expiry) = u64::from_str_radix(&nonce[..16], 16) else {
            return false;
        };
        let Some(tag) = self.nonce_tag(expiry, ip) else {
            return false;
        };
        let mut want = String::with_capacity(16);
        for b in tag {
            want.push_str(&format!("{b:02x}"));
        }
        want == nonce[16..]
            && (now.saturating_duration_since(self.epoch).as_millis() as u64) < expiry
    }

    fn clamp_lifetime(&self, requested: Option<u32>) -> u32 {
        let default = self.cfg.default_lifetime.as_secs() as u32;
        let max = self.cfg.max_lifetime.as_secs() as u32;
        match requested {
            None => default,
            Some(r) => r.clamp(default.min(max), max),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn allocate<'a>(
        &mut self,
        now: Instant,
        ft: FiveTuple,
        msg: &MessageRef<'a>,
        out: &mut Vec<u8>,
        bind: &mut dyn FnMut(SocketAddr) -> io::Result<R>,
        username: String,
        key: Key,
    ) -> Result<Output<'a, R>, StunError> {
        let fp = msg.has(attr_type::FINGERPRINT);
        let fail =
            |out: &mut Vec<u8>, code: u16, reason: &str| -> Result<Output<'a, R>, StunError> {
                let w = error(out, msg, code, reason)?;
                seal(w, Some(&key), fp)?;
                Ok(Output::Reply)
            };
        if let Some(a) = self.by_ft.get(&ft).and_then(|id| self.allocs.get(id)) {
            if a.alloc_tid == msg.transaction_id() {
                // Retransmitted Allocate: resend the success response.
                let (relay_addr, relay2, lifetime) = (a.relay_addr, a.relay2_addr(), a.lifetime);
                let relays = (relay_addr, relay2);
                self.allocate_success(out, msg, ft, relays, lifetime, &key, None, None)?;
                return Ok(Output::Reply);
            }
            return fail(out, 437, "Allocation Mismatch");
        }
        match msg.requested_transport() {
            Ok(Some(PROTO_UDP)) => {}
            Ok(Some(_)) => return fail(out, 442, "Unsupported Transport Protocol"),
            _ => return fail(out, 400, "Bad Request"),
        }
        let dont_fragment = msg.dont_fragment();
        if dont_fragment && !self.cfg.dont_fragment {
            // The driver cannot set DF on relayed datagrams: treat as unknown (RFC 8656 §7.2).
            let mut w = error(out, msg, 420, "Unknown Attribute")?;
            w.add_unknown_attributes(&[attr_type::DONT_FRAGMENT])?;
            seal(w, Some(&key), fp)?;
            return Ok(Output::Reply);
        }
        let (even_port, token) = match (msg.even_port(), msg.reservation_token()) {
            (Ok(e), Ok(t)) => (e, t),
            _ => return fail(out, 400, "Bad Request"),
        };
        let requested = msg.requested_address_family();
        let additional = msg.additional_address_family();
        if token.is_some() && (even_port.is_some() || msg.has(attr_type::REQUESTED_ADDRESS_FAMILY))
        {
            return fail(out, 400, "Bad Request");
        }
        let family = match (requested, additional.clone()) {
            (Err(StunError::BadFamily(_)), _) => {
                return fail(out, 440, "Address Family not Supported")
            }
            (Err(_), _) | (_, Err(_)) => return fail(out, 400, "Bad Request"),
            (Ok(Some(_)), Ok(Some(_))) => return fail(out, 400, "Bad Request"),
            (Ok(None), Ok(Some(AddressFamily::V4))) => return fail(out, 400, "Bad Request"),
            (Ok(Some(f)), Ok(None)) => f,
            (Ok(None), _) => AddressFamily::V4,
        };
        let dual = matches!(additional, Ok(Some(AddressFamily::V6)));
        if dual && token.is_some() {
            return fail(out, 400, "Bad Request");
        }
        let ip = match family {
            AddressFamily::V4 => self.cfg.relay_v4,
            AddressFamily::V6 => self.cfg.relay_v6,
        };
        let Some(ip) = ip else {
            return fail(out, 440, "Address Family not Supported");
        };
        let user_count = self.per_user.get(&username).copied().unwrap_or(0);
        if (self.cfg.user_quota > 0 && user_count >= self.cfg.user_quota)
            || (self.cfg.total_quota > 0 && self.allocs.len() as u32 >= self.cfg.total_quota)
        {
            return fail(out, 486, "Allocation Quota Reached");
        }
        let mut new_token = None;
        let bound = if let Some(tok) = token {
            match self.reservations.remove(&tok) {
                Some(r) if r.expires > now => Some((r.addr, r.relay)),
                Some(r) => {
                    self.ports.release(r.addr.port());
                    None
                }
                None => None,
            }
        } else if even_port == Some(true) {
            let pair = self.bind_pair(ip, bind);
            pair.map(|(a, ra, b, rb)| {
                let tok: [u8; 8] = rand::random();
                self.reservations.insert(
                    tok,
                    Reservation {
                        addr: b,
                        relay: rb,
                        expires: now + RESERVATION_LIFETIME,
                    },
                );
                new_token = Some(tok);
                (a, ra)
            })
        } else {
            self.bind_one(ip, even_port.is_some(), bind)
        };
        let Some((relay_addr, relay)) = bound else {
            return fail(out, 508, "Insufficient Capacity");
        };
        // Dual allocation: an IPv6 relay next to the IPv4 one; failures are reported in
        // ADDRESS-ERROR-CODE while the IPv4 allocation succeeds (RFC 8656 §7.2).
        let mut v6_error = None;
        let relay2 = match (dual, self.cfg.relay_v6) {
            (false, _) => None,
            (true, None) => {
                v6_error = Some((440, "Address Family not Supported"));
                None
            }
            (true, Some(ip6)) => {
                let r = self.bind_one(ip6, false, bind);
                if r.is_none() {
                    v6_error = Some((508, "Insufficient Capacity"));
                }
                r
            }
        };
        let relay2_addr = relay2.as_ref().map(|(a, _)| *a);
        let relay2_handle = relay2.as_ref().map(|(_, r)| r.clone());
        let lifetime = self.clamp_lifetime(msg.lifetime().ok().flatten());
        let id = self.next_id;
        self.next_id += 1;
        *self.per_user.entry(username.clone()).or_insert(0) += 1;
        info!(client = %ft.client, relay = %relay_addr, user = %username, lifetime, transport = ?ft.transport, "TURN allocation created");
        self.allocs.insert(
            id,
            Allocation {
                id,
                ft,
                relay_addr,
                relay: relay.clone(),
                relay2,
                username,
                alloc_tid: msg.transaction_id(),
                lifetime,
                expires: now + Duration::from_secs(u64::from(lifetime)),
                perms: HashMap::new(),
                channels: HashMap::new(),
                peer_channels: HashMap::new(),
                bucket: Bucket {
                    tokens: self.cfg.max_bps as f64,
                    last: now,
                },
            },
        );
        self.by_ft.insert(ft, id);
        self.by_relay.insert(relay_addr, id);
        if let Some(addr2) = relay2_addr {
            self.by_relay.insert(addr2, id);
        }
        self.metrics.active.set(self.allocs.len() as f64);
        self.allocate_success(
            out,
            msg,
            ft,
            (relay_addr, relay2_addr),
            lifetime,
            &key,
            v6_error,
            new_token,
        )?;
        Ok(Output::Created {
            id,
            relay,
            relay2: relay2_handle,
            dont_fragment,
        })
    }

    fn bind_one(
        &mut self,
        ip: IpAddr,
        even: bool,
        bind: &mut dyn FnMut(SocketAddr) -> io::Result<R>,
    ) -> Option<(SocketAddr, R)> {
        for _ in 0..64 {
            let port = self.ports.take(even)?;
            let addr = SocketAddr::new(ip, port);
            match bind(addr) {
                Ok(r) => return Some((addr, r)),
                Err(e) => {
                    debug!(%addr, error = %e, "relay port unavailable");
                    self.ports.release(port);
                }
            }
        }
        None
    }

    /// Bind an even port and the next one (the second is reserved for a RESERVATION-TOKEN).
    fn bind_pair(
        &mut self,
        ip: IpAddr,
        bind: &mut dyn FnMut(SocketAddr) -> io::Result<R>,
    ) -> Option<(SocketAddr, R, SocketAddr, R)> {
        for _ in 0..64 {
            let port = self.ports.take_pair()?;
            let (a, b) = (SocketAddr::new(ip, port), SocketAddr::new(ip, port + 1));
            match (bind(a), bind(b)) {
                (Ok(ra), Ok(rb)) => return Some((a, ra, b, rb)),
                _ => {
                    debug!(%a, "relay port pair unavailable");
                    self.ports.release(port);
                    self.ports.release(port + 1);
                }
            }
        }
        None
    }

    #[allow(clippy::too_many_arguments)]
    fn allocate_success(
        &self,
        out: &mut Vec<u8>,
        msg: &MessageRef<'_>,
        ft: FiveTuple,
        relays: Relays,
        lifetime: u32,
        key: &Key,
        v6_error: Option<(u16, &str)>,
        token: Option<[u8; 8]>,
    ) -> Result<(), StunError> {
        out.clear();
        let mut w = response(out, msg, Class::Success);
        w.add_xor_relayed_address(relays.0)?;
        if let Some(a) = relays.1 {
            w.add_xor_relayed_address(a)?;
        }
        w.add_lifetime(lifetime)?;
        w.add_xor_mapped_address(ft.client)?;
        if let Some(t) = token {
            w.add_reservation_token(t)?;
        }
        if let Some((code, reason)) = v6_error {
            // ADDRESS-ERROR-CODE: family IPv6, class, number, reason.
            let mut v = vec![
                AddressFamily::V6.to_u8(),
                0,
                (code / 100) as u8,
                (code % 100) as u8,
            ];
            v.extend_from_slice(reason.as_bytes());
            w.add_raw(attr_type::ADDRESS_ERROR_CODE, &v)?;
        }
        w.add_software(SOFTWARE)?;
        seal(w, Some(key), msg.has(attr_type::FINGERPRINT))
    }

    /// Find the allocation for `ft` and check it belongs to `username`: its id and relayed addresses (primary,
    /// and the second family's of a dual allocation). On failure the error is in `out`.
    fn owned_alloc(
        &self,
        ft: FiveTuple,
        msg: &MessageRef<'_>,
        out: &mut Vec<u8>,
        username: &str,
        key: &Key,
    ) -> Result<Option<(AllocId, Relays)>, StunError> {
        let fp = msg.has(attr_type::FINGERPRINT);
        let Some(a) = self.by_ft.get(&ft).and_then(|id| self.allocs.get(id)) else {
            seal(error(out, msg, 437, "Allocation Mismatch")?, Some(key), fp)?;
            return Ok(None);
        };
        if a.username != username {
            auth_failure("wrong_credentials");
            seal(error(out, msg, 441, "Wrong Credentials")?, Some(key), fp)?;
            return Ok(None);
        }
        Ok(Some((a.id, (a.relay_addr, a.relay2_addr()))))
    }

    fn refresh<'a>(
        &mut self,
        now: Instant,
        ft: FiveTuple,
        msg: &MessageRef<'a>,
        out: &mut Vec<u8>,
        username: &str,
        key: Key,
    ) -> Result<Output<'a, R>, StunError> {
        let fp = msg.has(attr_type::FINGERPRINT);
        let Some((id, (relay, relay2))) = self.owned_alloc(ft, msg, out, username, &key)? else {
            return Ok(Output::Reply);
        };
        let families: Vec<AddressFamily> = std::iter::once(relay)
            .chain(relay2)
            .map(|r| family_of(&r))
            .collect();
        match msg.requested_address_family() {
            Ok(Some(f)) if !families.contains(&f) => {
                seal(
                    error(out, msg, 443, "Peer Address Family Mismatch")?,
                    Some(&key),
                    fp,
                )?;
                return Ok(Output::Reply);
            }
            Err(_) => {
                seal(error(out, msg, 400, "Bad Request")?, Some(&key), fp)?;
                return Ok(Output::Reply);
            }
            _ => {}
        }
        let requested = match msg.lifetime() {
            Ok(v) => v,
            Err(_) => {
                seal(error(out, msg, 400, "Bad Request")?, Some(&key), fp)?;
                return Ok(Output::Reply);
            }
        };
        if requested == Some(0) {
            let relay = self.remove(id, "deleted by client");
            let mut w = response(out, msg, Class::Success);
            w.add_lifetime(0)?;
            seal(w, Some(&key), fp)?;
            return Ok(match relay {
                Some(relay) => Output::Released { id, relay },
                None => Output::Reply,
            });
        }
        let lifetime = self.clamp_lifetime(requested);
        if let Some(a) = self.allocs.get_mut(&id) {
            a.lifetime = lifetime;
            a.expires = now + Duration::from_secs(u64::from(lifetime));
        }
        let mut w = response(out, msg, Class::Success);
        w.add_lifetime(lifetime)?;
        seal(w, Some(&key), fp)?;
        Ok(Output::Reply)
    }

    /// Family + policy check of a peer; writes 443/403 into `out` and returns false when refused.
    fn check_peer(
        &self,
        relays: Relays,
        peer: SocketAddr,
        msg: &MessageRef<'_>,
        out: &mut Vec<u8>,
        key: &Key,
    ) -> Result<bool, StunError> {
        let fp = msg.has(attr_type::FINGERPRINT);
        let family_ok = family_of(&peer) == family_of(&relays.0)
            || relays.1.is_some_and(|r| family_of(&r) == family_of(&peer));
        if !family_ok {
            seal(
                error(out, msg, 443, "Peer Address Family Mismatch")?,
                Some(key),
                fp,
            )?;
            return Ok(false);
        }
        if !self.cfg.policy.permits(peer.ip()) {
            debug!(%peer, "peer refused by policy");
            seal(error(out, msg, 403, "Forbidden")?, Some(key), fp)?;
            return Ok(false);
        }
        Ok(true)
    }

    fn create_permission<'a>(
        &mut self,
        now: Instant,
        ft: FiveTuple,
        msg: &MessageRef<'a>,
        out: &mut Vec<u8>,
        username: &str,
        key: Key,
    ) -> Result<Output<'a, R>, StunError> {
        let fp = msg.has(attr_type::FINGERPRINT);
        let Some((id, relay_addr)) = self.owned_alloc(ft, msg, out, username, &key)? else {
            return Ok(Output::Reply);
        };
        let mut count = 0;
        for peer in msg.xor_peer_addresses() {
            let Ok(peer) = peer else {
                seal(error(out, msg, 400, "Bad Request")?, Some(&key), fp)?;
                return Ok(Output::Reply);
            };
            if !self.check_peer(relay_addr, peer, msg, out, &key)? {
                return Ok(Output::Reply);
            }
            count += 1;
        }
        if count == 0 {
            seal(error(out, msg, 400, "Bad Request")?, Some(&key), fp)?;
            return Ok(Output::Reply);
        }
        let exp = now + self.cfg.permission_lifetime;
        if let Some(a) = self.allocs.get_mut(&id) {
            for peer in msg.xor_peer_addresses().flatten() {
                a.perms.insert(peer.ip(), exp);
            }
        }
        seal(response(out, msg, Class::Success), Some(&key), fp)?;
        Ok(Output::Reply)
    }

    fn channel_bind<'a>(
        &mut self,
        now: Instant,
        ft: FiveTuple,
        msg: &MessageRef<'a>,
        out: &mut Vec<u8>,
        username: &str,
        key: Key,
    ) -> Result<Output<'a, R>, StunError> {
        let fp = msg.has(attr_type::FINGERPRINT);
        let Some((id, relay_addr)) = self.owned_alloc(ft, msg, out, username, &key)? else {
            return Ok(Output::Reply);
        };
        let (Ok(Some(ch)), Ok(Some(peer))) = (msg.channel_number(), msg.xor_peer_address()) else {
            seal(error(out, msg, 400, "Bad Request")?, Some(&key), fp)?;
            return Ok(Output::Reply);
        };
        if !(CHANNEL_MIN..=CHANNEL_MAX_ACCEPTED).contains(&ch) {
            seal(error(out, msg, 400, "Bad Request")?, Some(&key), fp)?;
            return Ok(Output::Reply);
        }
        if !self.check_peer(relay_addr, peer, msg, out, &key)? {
            return Ok(Output::Reply);
        }
        let Some(a) = self.allocs.get_mut(&id) else {
            return Ok(Output::None);
        };
        let ch_conflict = a.channels.get(&ch).is_some_and(|(p, _)| *p != peer);
        let peer_conflict = a.peer_channels.get(&peer).is_some_and(|c| *c != ch);
        if ch_conflict || peer_conflict {
            seal(error(out, msg, 400, "Bad Request")?, Some(&key), fp)?;
            return Ok(Output::Reply);
        }
        a.channels
            .insert(ch, (peer, now + self.cfg.channel_lifetime));
        a.peer_channels.insert(peer, ch);
        a.perms
            .insert(peer.ip(), now + self.cfg.permission_lifetime);
        seal(response(out, msg, Class::Success), Some(&key), fp)?;
        Ok(Output::Reply)
    }
}

/// coturn's REST password: base64(HMAC-SHA1(secret, username)).
pub fn rest_password(secret: &str, username: &str) -> String {
    let mut mac = match <HmacSha1 as Mac>::new_from_slice(secret.as_bytes()) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

fn response<'b>(out: &'b mut Vec<u8>, msg: &MessageRef<'_>, class: Class) -> MessageWriter<'b> {
    out.clear();
    MessageWriter::new(
        out,
        MessageType::new(msg.method(), class),
        msg.transaction_id(),
    )
}

fn error<'b>(
    out: &'b mut Vec<u8>,
    msg: &MessageRef<'_>,
    code: u16,
    reason: &str,
) -> Result<MessageWriter<'b>, StunError> {
    let mut w = response(out, msg, Class::Error);
    w.add_error_code(code, reason)?;
    Ok(w)
}

/// An allocation's relayed addresses: the primary one, and the second family's of a dual allocation.
type Relays = (SocketAddr, Option<SocketAddr>);

fn seal(mut w: MessageWriter<'_>, key: Option<&Key>, fp: bool) -> Result<(), StunError> {
    match key {
        Some(k) if k.sha256_integrity => w.add_message_integrity_sha256(k.as_slice())?,
        Some(k) => w.add_message_integrity(k.as_slice())?,
        None => {}
    }
    if fp {
        w.add_fingerprint()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT: &str = "192.0.2.10:5000";
    const SERVER: &str = "192.0.2.1:3478";

    fn ft() -> FiveTuple {
        FiveTuple {
            client: CLIENT.parse().expect("a"),
            server: SERVER.parse().expect("a"),
            transport: Transport::Udp,
        }
    }

    fn core(min_port: u16, max_port: u16) -> (Core<u16>, Instant) {
        let mut cfg = CoreConfig {
            realm: "r".into(),
            min_port,
            max_port,
            ..CoreConfig::default()
        };
        cfg.relay_v4 = Some("192.0.2.1".parse().expect("ip"));
        cfg.policy = PeerPolicy::new(&[], &[]).expect("policy");
        cfg.add_user("u:p").expect("user");
        let now = Instant::now();
        (Core::new(cfg, now), now)
    }

    /// Build an authenticated request (nonce taken from a prior challenge).
    fn request(
        method: Method,
        nonce: Option<&str>,
        extra: impl FnOnce(&mut MessageWriter<'_>),
    ) -> Vec<u8> {
        let mut buf = Vec::new();
        let mut w = MessageWriter::new(
            &mut buf,
            MessageType::new(method, Class::Request),
            TransactionId(rand::random()),
        );
        extra(&mut w);
        if let Some(n) = nonce {
            w.add_username("u").expect("u");
            w.add_realm("r").expect("r");
            w.add_nonce(n).expect("n");
            w.add_message_integrity(&long_term_key("u", "r", "p"))
                .expect("mi");
        }
        buf
    }

    fn run(
        core: &mut Core<u16>,
        now: Instant,
        ft: FiveTuple,
        req: &[u8],
        out: &mut Vec<u8>,
    ) -> (Option<u16>, bool) {
        let mut bound = |a: SocketAddr| Ok::<u16, io::Error>(a.port());
        let o = core.handle_client(now, ft, req, out, &mut bound);
        let created = matches!(o, Output::Created { .. });
        let m = Message::parse(out).expect("response");
        (m.error_code().expect("ec").map(|(c, _)| c), created)
    }

    #[test]
    fn sha256_password_algorithm_and_integrity() {
        let (mut core, t0) = core(50000, 50010);
        let mut out = Vec::new();
        let n = nonce(&mut core, t0, &mut out);
        // 401: nonce cookie with the "password algorithms" bit + PASSWORD-ALGORITHMS (SHA-256, MD5).
        assert!(n.starts_with("obMatJos2gAAA"), "{n}");
        let req = request(Method::ALLOCATE, None, |w| {
            w.add_requested_transport(17).expect("rt")
        });
        run(&mut core, t0, ft(), &req, &mut out);
        let m = Message::parse(&out).expect("m");
        let algs: Vec<u16> = match m.get(attr_type::PASSWORD_ALGORITHMS).expect("pa") {
            Some(stun::Attribute::PasswordAlgorithms(p)) => p.iter().map(|(a, _)| a).collect(),
            other => panic!("no PASSWORD-ALGORITHMS: {other:?}"),
        };
        assert_eq!(
            algs,
            vec![PASSWORD_ALGORITHM_SHA256, PASSWORD_ALGORITHM_MD5]
        );
        let offered = m
            .raw(attr_type::PASSWORD_ALGORITHMS)
            .expect("raw")
            .value
            .to_vec();
        let sha_key = long_term_key_sha256("u", "r", "p");
        let build = |algs: Option<&[u8]>, alg: Option<u16>, key: &[u8], tid: u8| {
            let mut buf = Vec::new();
            let mut w = MessageWriter::new(
                &mut buf,
                MessageType::new(Method::ALLOCATE, Class::Request),
                TransactionId([tid; 12]),
            );
            w.add_requested_transport(17).expect("rt");
            w.add_username("u").expect("u");
            w.add_realm("r").expect("r");
            w.add_nonce(&n).expect("n");
            if let Some(a) = algs {
                w.add_raw(attr_type::PASSWORD_ALGORITHMS, a).expect("pas");
            }
            if let Some(a) = alg {
                w.add(&stun::Attribute::PasswordAlgorithm {
                    algorithm: a,
                    params: &[],
                })
                .expect("pa");
            }
            w.add_message_integrity_sha256(key).expect("mi256");
            w.add_fingerprint().expect("fp");
            buf
        };
        // PASSWORD-ALGORITHM without PASSWORD-ALGORITHMS, or a tampered list → 400.
        let req = build(None, Some(PASSWORD_ALGORITHM_SHA256), &sha_key, 1);
        assert_eq!(run(&mut core, t0, ft(), &req, &mut out).0, Some(400));
        let req = build(
            Some(&[0, 1, 0, 0]),
            Some(PASSWORD_ALGORITHM_SHA256),
            &sha_key,
            2,
        );
        assert_eq!(run(&mut core, t0, ft(), &req, &mut out).0, Some(400));
        // SHA-256 algorithm but MD5 key → 401.
        let req = build(
            Some(&offered),
            Some(PASSWORD_ALGORITHM_SHA256),
            &long_term_key("u", "r", "p"),
            3,
        );
        assert_eq!(run(&mut core, t0, ft(), &req, &mut out).0, Some(401));
        // SHA-256 key + MESSAGE-INTEGRITY-SHA256 → success signed with MESSAGE-INTEGRITY-SHA256.
        let req = build(Some(&offered), Some(PASSWORD_ALGORITHM_SHA256), &sha_key, 4);
        let (code, created) = run(&mut core, t0, ft(), &req, &mut out);
        assert_eq!((code, created), (None, true));
        let m = Message::parse(&out).expect("m");
        assert!(!m.has(attr_type::MESSAGE_INTEGRITY));
        m.check_integrity_sha256(&sha_key)
            .expect("MI-SHA256 with SHA-256 key");
        // MD5 algorithm with MESSAGE-INTEGRITY-SHA256 works too (other 5-tuple).
        let mut ft2 = ft();
        ft2.client.set_port(5001);
        let req = build(
            Some(&offered),
            Some(PASSWORD_ALGORITHM_MD5),
            &long_term_key("u", "r", "p"),
            5,
        );
        assert_eq!(run(&mut core, t0, ft2, &req, &mut out), (None, true));
        let m = Message::parse(&out).expect("m");
        m.check_integrity_sha256(&long_term_key("u", "r", "p"))
            .expect("MI-SHA256 with MD5 key");
    }

    #[test]
    fn dual_allocation_two_relays() {
        let (mut core, t0) = core(50000, 50010);
        core.cfg.relay_v6 = Some("2001:db8::1".parse().expect("ip"));
        let mut out = Vec::new();
        let n = nonce(&mut core, t0, &mut out);
        let req = request(Method::ALLOCATE, Some(&n), |w| {
            w.add_requested_transport(17).expect("rt");
            w.add(&stun::Attribute::AdditionalAddressFamily(AddressFamily::V6))
                .expect("aaf");
        });
        let mut bound = |a: SocketAddr| Ok::<u16, io::Error>(a.port());
        let relay2 = match core.handle_client(t0, ft(), &req, &mut out, &mut bound) {
            Output::Created { relay, relay2, .. } => relay2.filter(|r2| *r2 != relay),
            _ => panic!("dual allocate refused"),
        };
        assert!(relay2.is_some());
        let m = Message::parse(&out).expect("m");
        let relays: Vec<SocketAddr> = m.xor_relayed_addresses().map(|r| r.expect("a")).collect();
        assert_eq!(relays.len(), 2);
        assert!(relays[0].is_ipv4() && relays[1].is_ipv6());
        assert!(!m.has(attr_type::ADDRESS_ERROR_CODE));
        // IPv6 peer goes out of the IPv6 relay.
        let peer: SocketAddr = "[2001:db8::7]:9000".parse().expect("peer");
        let perm = request(Method::CREATE_PERMISSION, Some(&n), |w| {
            w.add_xor_peer_address(peer).expect("p")
        });
        assert_eq!(run(&mut core, t0, ft(), &perm, &mut out).0, None);
        let mut send = Vec::new();
        let mut w = MessageWriter::new(
            &mut send,
            MessageType::new(Method::SEND, Class::Indication),
            TransactionId(rand::random()),
        );
        w.add_xor_peer_address(peer).expect("p");
        w.add_data(b"x").expect("d");
        match core.handle_client(t0, ft(), &send, &mut out, &mut bound) {
            Output::ToPeer { relay, .. } => assert_eq!(Some(relay), relay2),
            _ => panic!("not relayed"),
        }
        // Both ports are released with the allocation.
        assert_eq!(core.tick(t0 + Duration::from_secs(3600)).len(), 1);
        assert_eq!(core.ports.used.iter().filter(|u| **u).count(), 0);
    }

    #[test]
    fn dont_fragment_allocate_and_send() {
        let (mut core, t0) = core(50000, 50010);
        let mut out = Vec::new();
        let n = nonce(&mut core, t0, &mut out);
        let alloc_df = request(Method::ALLOCATE, Some(&n), |w| {
            w.add_requested_transport(17).expect("rt");
            w.add_dont_fragment().expect("df");
        });
        // Driver cannot set DF → 420 with UNKNOWN-ATTRIBUTES = DONT-FRAGMENT.
        core.cfg.dont_fragment = false;
        assert_eq!(run(&mut core, t0, ft(), &alloc_df, &mut out).0, Some(420));
        let m = Message::parse(&out).expect("m");
        let unknown: Vec<u16> = match m.get(attr_type::UNKNOWN_ATTRIBUTES).expect("ua") {
            Some(stun::Attribute::UnknownAttributes(l)) => l.iter().collect(),
            other => panic!("no UNKNOWN-ATTRIBUTES: {other:?}"),
        };
        assert_eq!(unknown, vec![attr_type::DONT_FRAGMENT]);
        // Supported → allocation created with DF requested.
        core.cfg.dont_fragment = true;
        let mut bound = |a: SocketAddr| Ok::<u16, io::Error>(a.port());
        match core.handle_client(t0, ft(), &alloc_df, &mut out, &mut bound) {
            Output::Created { dont_fragment, .. } => assert!(dont_fragment),
            _ => panic!("DONT-FRAGMENT allocate refused"),
        }
        let peer: SocketAddr = "198.51.100.7:9000".parse().expect("peer");
        let perm = request(Method::CREATE_PERMISSION, Some(&n), |w| {
            w.add_xor_peer_address(peer).expect("p")
        });
        assert_eq!(run(&mut core, t0, ft(), &perm, &mut out).0, None);
        // Send indication: DF only when DONT-FRAGMENT is present.
        for df in [true, false] {
            let mut send = Vec::new();
            let mut w = MessageWriter::new(
                &mut send,
                MessageType::new(Method::SEND, Class::Indication),
                TransactionId(rand::random()),
            );
            w.add_xor_peer_address(peer).expect("p");
            w.add_data(b"hello").expect("d");
            if df {
                w.add_dont_fragment().expect("df");
            }
            match core.handle_client(t0, ft(), &send, &mut out, &mut bound) {
                Output::ToPeer {
                    dont_fragment,
                    data,
                    ..
                } => {
                    assert_eq!(dont_fragment, df);
                    assert_eq!(data, b"hello");
                }
                _ => panic!("send indication not relayed"),
            }
        }
    }

    #[test]
    fn expired_rest_credentials_keep_their_allocation_but_make_no_new_one() {
        let (mut core, t0) = core(50000, 50010);
        core.cfg.auth_secret = Some("s3cret".into());
        let wall = SystemTime::now();
        core.set_wall_epoch(wall);
        let expiry = wall.duration_since(UNIX_EPOCH).expect("wall").as_secs() + 100;
        let user = format!("{expiry}:alice");
        let key = long_term_key(&user, "r", &rest_password("s3cret", &user));
        let signed = |method: Method, nonce: &str, tid: u8| {
            let mut buf = Vec::new();
            let mut w = MessageWriter::new(
                &mut buf,
                MessageType::new(method, Class::Request),
                TransactionId([tid; 12]),
            );
            if method == Method::ALLOCATE {
                w.add_requested_transport(17).expect("rt");
            }
            w.add_username(&user).expect("u");
            w.add_realm("r").expect("r");
            w.add_nonce(nonce).expect("n");
            w.add_message_integrity(&key).expect("mi");
            buf
        };
        let mut out = Vec::new();
        let n = nonce(&mut core, t0, &mut out);
        assert_eq!(
            run(
                &mut core,
                t0,
                ft(),
                &signed(Method::ALLOCATE, &n, 1),
                &mut out
            ),
            (None, true)
        );
        // 200 s later the credentials have expired (the allocation has not: 600 s).
        let t1 = t0 + Duration::from_secs(200);
        let n = nonce(&mut core, t1, &mut out);
        assert_eq!(
            run(
                &mut core,
                t1,
                ft(),
                &signed(Method::REFRESH, &n, 2),
                &mut out
            )
            .0,
            None,
            "the allocation made with them is refreshed"
        );
        let mut other = ft();
        other.client.set_port(5002);
        assert_eq!(
            run(
                &mut core,
                t1,
                other,
                &signed(Method::ALLOCATE, &n, 3),
                &mut out
            )
            .0,
            Some(401),
            "no new allocation on expired credentials"
        );
    }

    fn nonce(core: &mut Core<u16>, now: Instant, out: &mut Vec<u8>) -> String {
        let req = request(Method::ALLOCATE, None, |w| {
            w.add_requested_transport(17).expect("rt")
        });
        assert_eq!(run(core, now, ft(), &req, out).0, Some(401));
        Message::parse(out)
            .expect("m")
            .nonce()
            .expect("n")
            .expect("nonce")
            .to_string()
    }

    #[test]
    fn allocation_expires_and_port_is_reused() {
        let (mut core, t0) = core(50000, 50000); // a single relay port
        let mut out = Vec::new();
        let n = nonce(&mut core, t0, &mut out);
        let alloc = request(Method::ALLOCATE, Some(&n), |w| {
            w.add_requested_transport(17).expect("rt");
            w.add_lifetime(1).expect("lt"); // clamped up to 600
        });
        assert_eq!(run(&mut core, t0, ft(), &alloc, &mut out), (None, true));
        let m = Message::parse(&out).expect("m");
        assert_eq!(m.lifetime().expect("lt"), Some(600));
        assert_eq!(
            m.xor_relayed_address().expect("r"),
            Some("192.0.2.1:50000".parse().expect("a"))
        );
        // Pool exhausted for another client.
        let mut other = ft();
        other.client.set_port(5001);
        let alloc2 = request(Method::ALLOCATE, Some(&n), |w| {
            w.add_requested_transport(17).expect("rt")
        });
        assert_eq!(run(&mut core, t0, other, &alloc2, &mut out).0, Some(508));
        // Permission for a peer, then time passes: permission (300 s) expires first.
        let peer: SocketAddr = "198.51.100.7:4000".parse().expect("a");
        let perm = request(Method::CREATE_PERMISSION, Some(&n), |w| {
            w.add_xor_peer_address(peer).expect("p")
        });
        assert_eq!(run(&mut core, t0, ft(), &perm, &mut out).0, None);
        let id = *core.by_ft.get(&ft()).expect("alloc");
        assert!(core.handle_peer(t0, id, peer, b"x", &mut out));
        assert!(core.tick(t0 + Duration::from_secs(301)).is_empty());
        assert!(!core.handle_peer(t0 + Duration::from_secs(301), id, peer, b"x", &mut out));
        // The allocation expires at 600 s; the port goes back to the pool.
        let gone = core.tick(t0 + Duration::from_secs(601));
        assert_eq!(gone, vec![(id, 50000)]);
        assert_eq!(core.allocation_count(), 0);
        let later = t0 + Duration::from_secs(602);
        let n2 = nonce(&mut core, later, &mut out);
        let alloc3 = request(Method::ALLOCATE, Some(&n2), |w| {
            w.add_requested_transport(17).expect("rt")
        });
        assert_eq!(
            run(&mut core, later, other, &alloc3, &mut out),
            (None, true)
        );
    }

    #[test]
    fn nonce_expiry_and_error_codes() {
        let (mut core, t0) = core(50000, 50100);
        let mut out = Vec::new();
        let n = nonce(&mut core, t0, &mut out);
        let late = t0 + Duration::from_secs(601);
        let req = request(Method::ALLOCATE, Some(&n), |w| {
            w.add_requested_transport(17).expect("rt")
        });
        assert_eq!(run(&mut core, late, ft(), &req, &mut out).0, Some(438));
        let m = Message::parse(&out).expect("m");
        assert!(m.nonce().expect("n").is_some() && m.realm().expect("r") == Some("r"));
        // Forged nonce → 438 too.
        let req = request(
            Method::ALLOCATE,
            Some("0000000000ffffff0011223344556677"),
            |w| w.add_requested_transport(17).expect("rt"),
        );
        assert_eq!(run(&mut core, t0, ft(), &req, &mut out).0, Some(438));
        // TCP relay → 442, missing transport → 400, unknown attribute → 420.
        let req = request(Method::ALLOCATE, Some(&n), |w| {
            w.add_requested_transport(6).expect("rt")
        });
        assert_eq!(run(&mut core, t0, ft(), &req, &mut out).0, Some(442));
        let req = request(Method::ALLOCATE, Some(&n), |_| {});
        assert_eq!(run(&mut core, t0, ft(), &req, &mut out).0, Some(400));
        let req = request(Method::ALLOCATE, Some(&n), |w| {
            w.add_requested_transport(17).expect("rt");
            w.add_raw(0x0042, b"abcd").expect("raw");
        });
        assert_eq!(run(&mut core, t0, ft(), &req, &mut out).0, Some(420));
        let m = Message::parse(&out).expect("m");
        assert!(m.check_integrity(&long_term_key("u", "r", "p")).is_ok());
        // IPv6 relay not configured → 440; RESERVATION-TOKEN → 508.
        let req = request(Method::ALLOCATE, Some(&n), |w| {
            w.add_requested_transport(17).expect("rt");
            w.add(&stun::Attribute::RequestedAddressFamily(AddressFamily::V6))
                .expect("raf");
        });
        assert_eq!(run(&mut core, t0, ft(), &req, &mut out).0, Some(440));
        let req = request(Method::ALLOCATE, Some(&n), |w| {
            w.add_requested_transport(17).expect("rt");
            w.add_reservation_token([1; 8]).expect("tok");
        });
        assert_eq!(run(&mut core, t0, ft(), &req, &mut out).0, Some(508));
        // No allocation yet: Refresh/CreatePermission/ChannelBind → 437.
        let req = request(Method::REFRESH, Some(&n), |_| {});
        assert_eq!(run(&mut core, t0, ft(), &req, &mut out).0, Some(437));
        // Allocate, then a different user on the same 5-tuple → 441.
        let req = request(Method::ALLOCATE, Some(&n), |w| {
            w.add_requested_transport(17).expect("rt")
        });
        assert_eq!(run(&mut core, t0, ft(), &req, &mut out), (None, true));
        // Retransmission of the same Allocate gets the same success again.
        assert_eq!(run(&mut core, t0, ft(), &req, &mut out), (None, false));
        core.cfg.add_user("v:q").expect("user");
        let mut buf = Vec::new();
        let mut w = MessageWriter::new(
            &mut buf,
            MessageType::new(Method::REFRESH, Class::Request),
            TransactionId([3; 12]),
        );
        w.add_username("v").expect("u");
        w.add_realm("r").expect("r");
        w.add_nonce(&n).expect("n");
        w.add_message_integrity(&long_term_key("v", "r", "q"))
            .expect("mi");
        assert_eq!(run(&mut core, t0, ft(), &buf, &mut out).0, Some(441));
        // ChannelBind: bad channel number → 400, channel rebinding to another peer → 400.
        let peer: SocketAddr = "198.51.100.7:4000".parse().expect("a");
        let req = request(Method::CHANNEL_BIND, Some(&n), |w| {
            w.add_channel_number(0x3000).expect("ch");
            w.add_xor_peer_address(peer).expect("p");
        });
        assert_eq!(run(&mut core, t0, ft(), &req, &mut out).0, Some(400));
        let bind = |ch: u16, p: SocketAddr| {
            request(Method::CHANNEL_BIND, Some(&n), move |w| {
                w.add_channel_number(ch).expect("ch");
                w.add_xor_peer_address(p).expect("p");
            })
        };
        assert_eq!(
            run(&mut core, t0, ft(), &bind(0x4001, peer), &mut out).0,
            None
        );
        let other: SocketAddr = "198.51.100.8:4000".parse().expect("a");
        assert_eq!(
            run(&mut core, t0, ft(), &bind(0x4001, other), &mut out).0,
            Some(400)
        );
        assert_eq!(
            run(&mut core, t0, ft(), &bind(0x4002, peer), &mut out).0,
            Some(400)
        );
        // Peer data on the bound channel comes back as ChannelData.
        let id = *core.by_ft.get(&ft()).expect("alloc");
        assert!(core.handle_peer(t0, id, peer, b"hi", &mut out));
        assert_eq!(out, [0x40, 0x01, 0x00, 0x02, b'h', b'i']);
        // Unknown method → 400.
        let req = request(Method(0x0FF), None, |_| {});
        assert_eq!(run(&mut core, t0, ft(), &req, &mut out).0, Some(400));
    }

    #[test]
    fn bandwidth_cap_drops_excess() {
        let (mut core, t0) = core(50000, 50010);
        core.cfg.max_bps = 1000;
        let mut out = Vec::new();
        let n = nonce(&mut core, t0, &mut out);
        let req = request(Method::ALLOCATE, Some(&n), |w| {
            w.add_requested_transport(17).expect("rt")
        });
        assert_eq!(run(&mut core, t0, ft(), &req, &mut out), (None, true));
        let peer: SocketAddr = "198.51.100.7:4000".parse().expect("a");
        let perm = request(Method::CREATE_PERMISSION, Some(&n), |w| {
            w.add_xor_peer_address(peer).expect("p")
        });
        assert_eq!(run(&mut core, t0, ft(), &perm, &mut out).0, None);
        let id = *core.by_ft.get(&ft()).expect("alloc");
        let pkt = [0u8; 400];
        let passed = (0..10)
            .filter(|_| core.handle_peer(t0, id, peer, &pkt, &mut out))
            .count();
        assert_eq!(passed, 2);
        assert!(core.handle_peer(t0 + Duration::from_secs(1), id, peer, &pkt, &mut out));
    }

    #[test]
    fn even_port_reservation_token() {
        let (mut core, t0) = core(50001, 50010);
        let mut out = Vec::new();
        let n = nonce(&mut core, t0, &mut out);
        let req = request(Method::ALLOCATE, Some(&n), |w| {
            w.add_requested_transport(17).expect("rt");
            w.add(&stun::Attribute::EvenPort(true)).expect("even");
        });
        assert_eq!(run(&mut core, t0, ft(), &req, &mut out), (None, true));
        let m = Message::parse(&out).expect("m");
        let relay = m.xor_relayed_address().expect("r").expect("relay");
        assert_eq!(relay.port() % 2, 0);
        let token = m.reservation_token().expect("t").expect("token");
        let mut other = ft();
        other.client.set_port(6000);
        let with_token = request(Method::ALLOCATE, Some(&n), |w| {
            w.add_requested_transport(17).expect("rt");
            w.add_reservation_token(token).expect("tok");
        });
        assert_eq!(
            run(&mut core, t0, other, &with_token, &mut out),
            (None, true)
        );
        let m = Message::parse(&out).expect("m");
        assert_eq!(
            m.xor_relayed_address().expect("r").expect("relay").port(),
            relay.port() + 1
        );
        // A token is single-use.
        other.client.set_port(6001);
        assert_eq!(
            run(&mut core, t0, other, &with_token, &mut out).0,
            Some(508)
        );
        // Unused reservations expire and give their port back.
        let mut third = ft();
        third.client.set_port(7000);
        let req2 = request(Method::ALLOCATE, Some(&n), |w| {
            w.add_requested_transport(17).expect("rt");
            w.add(&stun::Attribute::EvenPort(true)).expect("even");
        });
        assert_eq!(run(&mut core, t0, third, &req2, &mut out), (None, true));
        assert_eq!(core.reservations.len(), 1);
        core.tick(t0 + Duration::from_secs(31));
        assert!(core.reservations.is_empty());
    }

    // ---- relay-to-relay short circuit ----------------------------------------------------------------

    /// Counts what the core reports through the `metrics` facade (installed per test with
    /// `metrics::with_local_recorder`, so tests running in parallel do not share counts).
    #[derive(Default)]
    struct Counts(std::sync::Mutex<HashMap<String, Arc<std::sync::atomic::AtomicU64>>>);

    use std::sync::Arc;

    impl Counts {
        fn slot(&self, key: &metrics::Key) -> Arc<std::sync::atomic::AtomicU64> {
            let name = key
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .fold(key.name().to_string(), |n, l| format!("{n}{{{l}}}"));
            let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
            m.entry(name).or_default().clone()
        }
        fn get(&self, name: &str) -> u64 {
            let m = self.0.lock().unwrap_or_else(|e| e.into_inner());
            m.get(name)
                .map(|v| v.load(std::sync::atomic::Ordering::Relaxed))
                .unwrap_or(0)
        }
    }

    impl metrics::Recorder for Counts {
        fn describe_counter(
            &self,
            _: metrics::KeyName,
            _: Option<metrics::Unit>,
            _: metrics::SharedString,
        ) {
        }
        fn describe_gauge(
            &self,
            _: metrics::KeyName,
            _: Option<metrics::Unit>,
            _: metrics::SharedString,
        ) {
        }
        fn describe_histogram(
            &self,
            _: metrics::KeyName,
            _: Option<metrics::Unit>,
            _: metrics::SharedString,
        ) {
        }
        fn register_counter(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> Counter {
            Counter::from_arc(self.slot(key))
        }
        fn register_gauge(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> Gauge {
            Gauge::from_arc(self.slot(key))
        }
        fn register_histogram(
            &self,
            _: &metrics::Key,
            _: &metrics::Metadata<'_>,
        ) -> metrics::Histogram {
            metrics::Histogram::noop()
        }
    }

    /// Two UDP allocations on one core (clients on ports 5000 and 5001): their 5-tuples, relayed
    /// addresses and ids, and a valid nonce.
    struct Pair {
        a: FiveTuple,
        b: FiveTuple,
        ra: SocketAddr,
        rb: SocketAddr,
        a_id: AllocId,
        b_id: AllocId,
        nonce: String,
    }

    fn pair(core: &mut Core<u16>, t0: Instant, b_transport: Transport) -> Pair {
        let mut out = Vec::new();
        let nonce = nonce(core, t0, &mut out);
        let a = ft();
        let mut b = ft();
        b.client.set_port(5001);
        b.transport = b_transport;
        let mut relayed = |f: FiveTuple| {
            let req = request(Method::ALLOCATE, Some(&nonce), |w| {
                w.add_requested_transport(17).expect("rt")
            });
            assert_eq!(run(core, t0, f, &req, &mut out), (None, true));
            let m = Message::parse(&out).expect("m");
            let r = m.xor_relayed_address().expect("r").expect("relay");
            (r, *core.by_ft.get(&f).expect("id"))
        };
        let (ra, a_id) = relayed(a);
        let (rb, b_id) = relayed(b);
        Pair {
            a,
            b,
            ra,
            rb,
            a_id,
            b_id,
            nonce,
        }
    }

    fn channel_bind(
        core: &mut Core<u16>,
        t0: Instant,
        f: FiveTuple,
        n: &str,
        ch: u16,
        peer: SocketAddr,
    ) -> Option<u16> {
        let req = request(Method::CHANNEL_BIND, Some(n), |w| {
            w.add_channel_number(ch).expect("ch");
            w.add_xor_peer_address(peer).expect("p");
        });
        run(core, t0, f, &req, &mut Vec::new()).0
    }

    fn create_permission(
        core: &mut Core<u16>,
        t0: Instant,
        f: FiveTuple,
        n: &str,
        peer: SocketAddr,
    ) -> Option<u16> {
        let req = request(Method::CREATE_PERMISSION, Some(n), |w| {
            w.add_xor_peer_address(peer).expect("p")
        });
        run(core, t0, f, &req, &mut Vec::new()).0
    }

    /// [`pair`] with a's channel 0x4000 bound to b's relayed address and b's permission for a's.
    fn bound_pair(core: &mut Core<u16>, t0: Instant, b_transport: Transport) -> Pair {
        let p = pair(core, t0, b_transport);
        assert_eq!(channel_bind(core, t0, p.a, &p.nonce, 0x4000, p.rb), None);
        assert_eq!(create_permission(core, t0, p.b, &p.nonce, p.ra), None);
        p
    }

    fn channel_data(ch: u16, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        ChannelData::encode(&mut v, ch, payload, false).expect("encode");
        v
    }

    fn send_indication(peer: SocketAddr, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        let mut w = MessageWriter::new(
            &mut v,
            MessageType::new(Method::SEND, Class::Indication),
            TransactionId([9; 12]),
        );
        w.add_xor_peer_address(peer).expect("p");
        w.add_data(payload).expect("d");
        v
    }

    /// What the core does with `data` from client `f`: Some(target id, target 5-tuple) when short-
    /// circuited (the datagram for the target's client is in `out`), None when dropped; panics on ToPeer.
    fn client_data(
        core: &mut Core<u16>,
        t0: Instant,
        f: FiveTuple,
        data: &[u8],
        out: &mut Vec<u8>,
    ) -> Option<(AllocId, FiveTuple)> {
        let mut bound = |a: SocketAddr| Ok::<u16, io::Error>(a.port());
        match core.handle_client(t0, f, data, out, &mut bound) {
            Output::ToClient { id, client } => Some((id, client)),
            Output::None => None,
            Output::ToPeer { peer, .. } => panic!("relayed through the sockets to {peer}"),
            _ => panic!("unexpected output"),
        }
    }

    #[test]
    fn short_circuit_delivers_data_indication_then_channel_data_to_the_other_allocation() {
        let counts = Counts::default();
        metrics::with_local_recorder(&counts, || {
            let (mut core, t0) = core(50000, 50010);
            let p = bound_pair(&mut core, t0, Transport::Udp);
            let mut out = Vec::new();
            // b has a permission but no channel for a's relayed address: a Data indication from ra.
            let got = client_data(
                &mut core,
                t0,
                p.a,
                &channel_data(0x4000, b"hello"),
                &mut out,
            );
            assert_eq!(got, Some((p.b_id, p.b)));
            let m = Message::parse(&out).expect("data indication");
            assert_eq!(m.method(), Method::DATA);
            assert_eq!(m.class(), Class::Indication);
            assert_eq!(m.xor_peer_address().expect("peer"), Some(p.ra));
            assert_eq!(m.data(), Some(&b"hello"[..]));
            // Once b binds a channel to ra, the same data arrives as ChannelData on b's channel.
            assert_eq!(
                channel_bind(&mut core, t0, p.b, &p.nonce, 0x4005, p.ra),
                None
            );
            let got = client_data(
                &mut core,
                t0,
                p.a,
                &channel_data(0x4000, b"hello"),
                &mut out,
            );
            assert_eq!(got, Some((p.b_id, p.b)));
            assert_eq!(out, channel_data(0x4005, b"hello"));
            // A Send indication from b to ra reaches a on a's channel to rb.
            let got = client_data(
                &mut core,
                t0,
                p.b,
                &send_indication(p.ra, b"back"),
                &mut out,
            );
            assert_eq!(got, Some((p.a_id, p.a)));
            assert_eq!(out, channel_data(0x4000, b"back"));
            // Counted like the socket path: both directions' bytes, plus the short-circuit count.
            assert_eq!(
                counts.get("turn_relayed_bytes_total{direction=client_to_peer}"),
                14
            );
            assert_eq!(
                counts.get("turn_relayed_bytes_total{direction=peer_to_client}"),
                14
            );
            assert_eq!(counts.get("turn_short_circuit_packets_total"), 3);
        });
    }

    #[test]
    fn short_circuit_without_the_targets_permission_is_dropped_and_counted() {
        let counts = Counts::default();
        metrics::with_local_recorder(&counts, || {
            let (mut core, t0) = core(50000, 50010);
            let p = pair(&mut core, t0, Transport::Udp);
            let mut out = Vec::new();
            assert_eq!(
                channel_bind(&mut core, t0, p.a, &p.nonce, 0x4000, p.rb),
                None
            );
            // b never permitted a's relayed address: dropped by b, as its relay socket would drop it.
            let got = client_data(&mut core, t0, p.a, &channel_data(0x4000, b"x"), &mut out);
            assert_eq!(got, None);
            assert!(out.is_empty());
            assert_eq!(
                counts.get("turn_dropped_packets_total{reason=no_permission}"),
                1
            );
            assert_eq!(
                counts.get("turn_relayed_bytes_total{direction=peer_to_client}"),
                0
            );
            // With b's permission it arrives; once that permission has expired (a refreshed its own) it
            // is dropped at b again.
            assert_eq!(create_permission(&mut core, t0, p.b, &p.nonce, p.ra), None);
            let got = client_data(&mut core, t0, p.a, &channel_data(0x4000, b"x"), &mut out);
            assert_eq!(got, Some((p.b_id, p.b)));
            let later = t0 + Duration::from_secs(301);
            assert_eq!(
                create_permission(&mut core, later, p.a, &p.nonce, p.rb),
                None
            );
            let got = client_data(&mut core, later, p.a, &channel_data(0x4000, b"x"), &mut out);
            assert_eq!(got, None);
            assert_eq!(
                counts.get("turn_relayed_bytes_total{direction=peer_to_client}"),
                1
            );
            assert_eq!(
                counts.get("turn_dropped_packets_total{reason=no_permission}"),
                2
            );
        });
    }

    #[test]
    fn short_circuit_charges_the_targets_bandwidth_cap() {
        let (mut core, t0) = core(50000, 50010);
        core.cfg.max_bps = 1000;
        let p = bound_pair(&mut core, t0, Transport::Udp);
        let mut out = Vec::new();
        // b's relay already took 800 of its 1000 bytes/s from an outside peer on the same IP.
        let outside = SocketAddr::new(p.ra.ip(), 9);
        assert!(core.handle_peer(t0, p.b_id, outside, &[0; 800], &mut out));
        // a still has its whole budget, b does not: 400 bytes from a are dropped at b.
        assert_eq!(
            client_data(
                &mut core,
                t0,
                p.a,
                &channel_data(0x4000, &[0; 400]),
                &mut out
            ),
            None
        );
        assert!(client_data(
            &mut core,
            t0,
            p.a,
            &channel_data(0x4000, &[0; 100]),
            &mut out
        )
        .is_some());
    }

    #[test]
    fn short_circuit_follows_peer_policy_and_setting_and_only_reaches_live_udp_allocations() {
        // Policy: relayed addresses refused as peers → no permission or channel to them, nothing delivered.
        let (mut core, t0) = self::core(50000, 50010);
        core.cfg.policy = PeerPolicy::new(&[], &["192.0.2.1".into()]).expect("policy");
        let p = pair(&mut core, t0, Transport::Udp);
        let mut out = Vec::new();
        assert_eq!(
            channel_bind(&mut core, t0, p.a, &p.nonce, 0x4000, p.rb),
            Some(403)
        );
        assert_eq!(
            create_permission(&mut core, t0, p.a, &p.nonce, p.rb),
            Some(403)
        );
        assert_eq!(
            client_data(&mut core, t0, p.a, &send_indication(p.rb, b"x"), &mut out),
            None
        );
        assert_eq!(
            client_data(&mut core, t0, p.a, &channel_data(0x4000, b"x"), &mut out),
            None
        );

        let to_peer = |core: &mut Core<u16>, f: FiveTuple, data: &[u8]| {
            let mut bound = |a: SocketAddr| Ok::<u16, io::Error>(a.port());
            match core.handle_client(t0, f, data, &mut Vec::new(), &mut bound) {
                Output::ToPeer { relay, peer, .. } => Some((relay, peer)),
                _ => None,
            }
        };
        // Setting off: the same data leaves through a's relay socket to rb.
        let (mut core, t0) = self::core(50000, 50010);
        core.cfg.relay_short_circuit = false;
        let p = bound_pair(&mut core, t0, Transport::Udp);
        assert_eq!(
            to_peer(&mut core, p.a, &channel_data(0x4000, b"x")),
            Some((p.ra.port(), p.rb))
        );

        // A TCP client's allocation is reached through the sockets (its stream writer is elsewhere).
        let (mut core, t0) = self::core(50000, 50010);
        let p = bound_pair(&mut core, t0, Transport::Tcp);
        assert_eq!(
            to_peer(&mut core, p.a, &channel_data(0x4000, b"x")),
            Some((p.ra.port(), p.rb))
        );

        // Once b's allocation is deleted its address is no longer ours: a's data goes to the socket.
        let (mut core, t0) = self::core(50000, 50010);
        let p = bound_pair(&mut core, t0, Transport::Udp);
        assert!(client_data(&mut core, t0, p.a, &channel_data(0x4000, b"x"), &mut out).is_some());
        let delete = request(Method::REFRESH, Some(&p.nonce), |w| {
            w.add_lifetime(0).expect("lt")
        });
        assert_eq!(run(&mut core, t0, p.b, &delete, &mut out).0, None);
        assert_eq!(
            to_peer(&mut core, p.a, &channel_data(0x4000, b"x")),
            Some((p.ra.port(), p.rb))
        );
    }
}
