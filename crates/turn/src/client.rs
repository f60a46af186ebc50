//! TURN client (RFC 8656) over UDP: Allocate with authentication retry (401/438), Refresh,
//! CreatePermission, ChannelBind, Send/Data indications and ChannelData.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use stun::{
    attr_type, long_term_key, long_term_key_sha256, AddressFamily, Attribute, ChannelData, Class,
    Message, MessageType, MessageWriter, Method, StunError, TransactionId, CHANNEL_MIN,
    PASSWORD_ALGORITHM_SHA256,
};

/// Password algorithm for long-term credentials (RFC 8489 §9.2.2, §18.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PasswordAlgorithm {
    /// MD5 key, MESSAGE-INTEGRITY (RFC 5389 behaviour; no algorithm attributes are sent).
    #[default]
    Md5,
    /// SHA-256 key, PASSWORD-ALGORITHM + echoed PASSWORD-ALGORITHMS, MESSAGE-INTEGRITY-SHA256.
    /// Fails with a protocol error if the server does not offer SHA-256.
    Sha256,
}
use tokio::net::UdpSocket;
use tokio::time::{timeout_at, Instant};

/// Client errors.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("STUN error: {0}")]
    Stun(#[from] StunError),
    #[error("no response from the TURN server")]
    Timeout,
    #[error("TURN error {code}: {reason}")]
    Response { code: u16, reason: String },
    #[error("protocol error: {0}")]
    Protocol(&'static str),
}

impl ClientError {
    /// The STUN error code, if the server answered with an error response.
    pub fn code(&self) -> Option<u16> {
        match self {
            ClientError::Response { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// A TURN client bound to one local UDP socket (one allocation).
pub struct TurnClient {
    socket: UdpSocket,
    server: SocketAddr,
    username: String,
    password: String,
    realm: Option<String>,
    nonce: Option<String>,
    key: Option<Vec<u8>>,
    /// PASSWORD-ALGORITHMS value from the last challenge (echoed with SHA-256).
    offered_algorithms: Option<Vec<u8>>,
    relayed: Option<SocketAddr>,
    mapped: Option<SocketAddr>,
    channels: HashMap<SocketAddr, u16>,
    channel_peers: HashMap<u16, SocketAddr>,
    next_channel: u16,
    queued: VecDeque<(SocketAddr, Vec<u8>)>,
    buf: Vec<u8>,
    out: Vec<u8>,
    stale_nonce_retries: u32,
    /// Total time to wait for a response (retransmitting with doubling RTO from 200 ms).
    pub request_timeout: Duration,
    /// Send DONT-FRAGMENT in Allocate (the server then sets DF on relayed datagrams).
    pub dont_fragment: bool,
    /// Password algorithm for authenticated requests (set before the first request).
    pub password_algorithm: PasswordAlgorithm,
    /// REQUESTED-ADDRESS-FAMILY for Allocate (None: server default, IPv4).
    pub requested_family: Option<AddressFamily>,
    /// ADDITIONAL-ADDRESS-FAMILY for Allocate (IPv6: dual allocation).
    pub additional_family: Option<AddressFamily>,
    relayed_all: Vec<SocketAddr>,
}

impl TurnClient {
    /// Bind a local UDP socket (same family as `server`) for talking to `server`.
    pub async fn new(
        server: SocketAddr,
        username: &str,
        password: &str,
    ) -> Result<Self, ClientError> {
        let local: SocketAddr = if server.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            "[::]:0"
                .parse()
                .map_err(|_| ClientError::Protocol("addr"))?
        };
        let local = if server.ip().is_loopback() {
            SocketAddr::new(server.ip(), 0)
        } else {
            local
        };
        let socket = UdpSocket::bind(local).await?;
        Ok(TurnClient {
            socket,
            server,
            username: username.to_string(),
            password: password.to_string(),
            realm: None,
            nonce: None,
            key: None,
            offered_algorithms: None,
            relayed: None,
            mapped: None,
            channels: HashMap::new(),
            channel_peers: HashMap::new(),
            next_channel: CHANNEL_MIN,
            queued: VecDeque::new(),
            buf: vec![0u8; 65536],
            out: Vec::with_capacity(2048),
            stale_nonce_retries: 0,
            request_timeout: Duration::from_secs(3),
            dont_fragment: false,
            password_algorithm: PasswordAlgorithm::Md5,
            requested_family: None,
            additional_family: None,
            relayed_all: Vec::new(),
        })
    }

    pub fn local_addr(&self) -> Result<SocketAddr, ClientError> {
        Ok(self.socket.local_addr()?)
    }
    /// The relayed transport address (after [`TurnClient::allocate`]).
    pub fn relayed_addr(&self) -> Option<SocketAddr> {
        self.relayed
    }
    /// Every relayed address (two after a dual allocation).
    pub fn relayed_addrs(&self) -> &[SocketAddr] {
        &self.relayed_all
    }
    /// Our address as seen by the server (XOR-MAPPED-ADDRESS).
    pub fn mapped_addr(&self) -> Option<SocketAddr> {
        self.mapped
    }
    /// How many times a request was retried after 438 Stale Nonce.
    pub fn stale_nonce_retries(&self) -> u32 {
        self.stale_nonce_retries
    }

    /// Send one request and wait for its response; returns the response bytes in `self.buf[..n]`.
    /// `extra` adds method-specific attributes. Handles 401/438 by retrying with fresh credentials.
    async fn transact(
        &mut self,
        method: Method,
        authenticated: bool,
        extra: &dyn Fn(&mut MessageWriter<'_>) -> Result<(), StunError>,
    ) -> Result<usize, ClientError> {
        for _attempt in 0..3 {
            let tid = TransactionId(rand::random());
            self.out.clear();
            {
                let mut w = MessageWriter::new(
                    &mut self.out,
                    MessageType::new(method, Class::Request),
                    tid,
                );
                extra(&mut w)?;
                if authenticated {
                    if let (Some(realm), Some(nonce), Some(key)) =
                        (&self.realm, &self.nonce, &self.key)
                    {
                        w.add_username(&self.username)?;
                        w.add_realm(realm)?;
                        w.add_nonce(nonce)?;
                        if self.password_algorithm == PasswordAlgorithm::Sha256 {
                            if let Some(algs) = &self.offered_algorithms {
                                w.add_raw(attr_type::PASSWORD_ALGORITHMS, algs)?;
                            }
                            w.add(&Attribute::PasswordAlgorithm {
                                algorithm: PASSWORD_ALGORITHM_SHA256,
                                params: &[],
                            })?;
                            w.add_message_integrity_sha256(key)?;
                        } else {
                            w.add_message_integrity(key)?;
                        }
                    }
                }
                w.add_fingerprint()?;
            }
            let n = self.exchange(tid).await?;
            let msg = Message::parse(&self.buf[..n])?;
            match msg.class() {
                Class::Success => {
                    if authenticated {
                        if let Some(key) = &self.key {
                            if self.password_algorithm == PasswordAlgorithm::Sha256 {
                                msg.check_integrity_sha256(key)
                            } else {
                                msg.check_integrity(key)
                            }
                            .map_err(|_| ClientError::Protocol("bad response integrity"))?;
                        }
                    }
                    return Ok(n);
                }
                Class::Error => {
                    let (code, reason) = msg
                        .error_code()?
                        .ok_or(ClientError::Protocol("error without ERROR-CODE"))?;
                    let had_key = self.key.is_some();
                    if authenticated && (code == 401 && !had_key || code == 438) {
                        let realm = msg
                            .realm()?
                            .ok_or(ClientError::Protocol("401 without REALM"))?
                            .to_string();
                        let nonce = msg
                            .nonce()?
                            .ok_or(ClientError::Protocol("401 without NONCE"))?
                            .to_string();
                        self.key = Some(match self.password_algorithm {
                            PasswordAlgorithm::Md5 => {
                                long_term_key(&self.username, &realm, &self.password).to_vec()
                            }
                            PasswordAlgorithm::Sha256 => {
                                let algs = msg
                                    .raw(attr_type::PASSWORD_ALGORITHMS)
                                    .map(|a| a.value)
                                    .ok_or(ClientError::Protocol("no PASSWORD-ALGORITHMS"))?;
                                let offered = stun::PasswordAlgorithms::from_raw(algs)
                                    .ok_or(ClientError::Protocol("bad PASSWORD-ALGORITHMS"))?
                                    .iter()
                                    .any(|(a, _)| a == PASSWORD_ALGORITHM_SHA256);
                                if !offered {
                                    return Err(ClientError::Protocol(
                                        "server does not offer SHA-256",
                                    ));
                                }
                                self.offered_algorithms = Some(algs.to_vec());
                                long_term_key_sha256(&self.username, &realm, &self.password)
                                    .to_vec()
                            }
                        });
                        self.realm = Some(realm);
                        self.nonce = Some(nonce);
                        if code == 438 {
                            self.stale_nonce_retries += 1;
                        }
                        continue;
                    }
                    return Err(ClientError::Response {
                        code,
                        reason: reason.to_string(),
                    });
                }
                _ => return Err(ClientError::Protocol("unexpected message class")),
            }
        }
        Err(ClientError::Protocol("authentication retries exhausted"))
    }

    /// Send `self.out` (retransmitting) until a response with `tid` arrives in `self.buf`.
    async fn exchange(&mut self, tid: TransactionId) -> Result<usize, ClientError> {
        let deadline = Instant::now() + self.request_timeout;
        let mut rto = Duration::from_millis(200);
        loop {
            self.socket.send_to(&self.out, self.server).await?;
            let resend_at = (Instant::now() + rto).min(deadline);
            rto *= 2;
            loop {
                let r = timeout_at(resend_at, self.socket.recv_from(&mut self.buf)).await;
                let (n, from) = match r {
                    Err(_) => break,
                    Ok(v) => v?,
                };
                if from != self.server {
                    continue;
                }
                if let Ok(m) = Message::parse(&self.buf[..n]) {
                    if m.transaction_id() == tid
                        && matches!(m.class(), Class::Success | Class::Error)
                    {
                        return Ok(n);
                    }
                }
                self.queue_data(n);
            }
            if Instant::now() >= deadline {
                return Err(ClientError::Timeout);
            }
        }
    }

    /// Keep relayed data that arrived while waiting for a response.
    fn queue_data(&mut self, n: usize) {
        if let Some((peer, range)) = self.decode_data(n) {
            if self.queued.len() < 1024 {
                self.queued.push_back((peer, self.buf[range].to_vec()));
            }
        }
    }

    /// Decode a Data indication or ChannelData in `self.buf[..n]`: (peer, payload range in buf).
    fn decode_data(&self, n: usize) -> Option<(SocketAddr, std::ops::Range<usize>)> {
        let b = &self.buf[..n];
        if ChannelData::is_channel_data(b) {
            let cd = ChannelData::parse(b).ok()?;
            let peer = *self.channel_peers.get(&cd.channel)?;
            return Some((peer, 4..4 + cd.data.len()));
        }
        let m = Message::parse(b).ok()?;
        if m.method() != Method::DATA || m.class() != Class::Indication {
            return None;
        }
        let peer = m.xor_peer_address().ok()??;
        let data = m.data()?;
        let start = data.as_ptr() as usize - b.as_ptr() as usize;
        Some((peer, start..start + data.len()))
    }

    /// STUN Binding: our server-reflexive address.
    pub async fn binding(&mut self) -> Result<SocketAddr, ClientError> {
        let n = self.transact(Method::BINDING, false, &|_| Ok(())).await?;
        let m = Message::parse(&self.buf[..n])?;
        m.check_fingerprint()?;
        let a = m
            .xor_mapped_address()?
            .ok_or(ClientError::Protocol("no XOR-MAPPED-ADDRESS"))?;
        self.mapped = Some(a);
        Ok(a)
    }

    /// Allocate a UDP relay (retrying after 401 with the server's realm and nonce).
    pub async fn allocate(&mut self) -> Result<SocketAddr, ClientError> {
        let df = self.dont_fragment;
        let (requested, additional) = (self.requested_family, self.additional_family);
        let n = self
            .transact(Method::ALLOCATE, true, &|w| {
                w.add_requested_transport(17)?;
                if let Some(f) = requested {
                    w.add(&Attribute::RequestedAddressFamily(f))?;
                }
                if let Some(f) = additional {
                    w.add(&Attribute::AdditionalAddressFamily(f))?;
                }
                if df {
                    w.add_dont_fragment()?;
                }
                Ok(())
            })
            .await?;
        let m = Message::parse(&self.buf[..n])?;
        let relayed = m
            .xor_relayed_address()?
            .ok_or(ClientError::Protocol("no XOR-RELAYED-ADDRESS"))?;
        self.mapped = m.xor_mapped_address()?;
        self.relayed_all = m.xor_relayed_addresses().collect::<Result<_, _>>()?;
        self.relayed = Some(relayed);
        Ok(relayed)
    }

    /// Refresh the allocation; `lifetime` 0 deletes it. Returns the granted lifetime.
    pub async fn refresh(&mut self, lifetime: u32) -> Result<u32, ClientError> {
        let n = self
            .transact(Method::REFRESH, true, &|w| w.add_lifetime(lifetime))
            .await?;
        let m = Message::parse(&self.buf[..n])?;
        if lifetime == 0 {
            self.relayed = None;
        }
        Ok(m.lifetime()?.unwrap_or(lifetime))
    }

    /// Install (or refresh) a permission for `peer`'s IP.
    pub async fn create_permission(&mut self, peer: SocketAddr) -> Result<(), ClientError> {
        self.transact(Method::CREATE_PERMISSION, true, &|w| {
            w.add_xor_peer_address(peer)
        })
        .await?;
        Ok(())
    }

    /// Bind a channel to `peer` (reusing the existing one if any). Returns the channel number.
    pub async fn channel_bind(&mut self, peer: SocketAddr) -> Result<u16, ClientError> {
        let ch = match self.channels.get(&peer) {
            Some(c) => *c,
            None => {
                let c = self.next_channel;
                self.next_channel = self
                    .next_channel
                    .checked_add(1)
                    .ok_or(ClientError::Protocol("out of channels"))?;
                c
            }
        };
        self.transact(Method::CHANNEL_BIND, true, &|w| {
            w.add_channel_number(ch)?;
            w.add_xor_peer_address(peer)
        })
        .await?;
        self.channels.insert(peer, ch);
        self.channel_peers.insert(ch, peer);
        Ok(ch)
    }

    /// Send `data` to `peer` through the relay (ChannelData if a channel is bound, else a Send indication).
    pub async fn send_to(&mut self, data: &[u8], peer: SocketAddr) -> Result<(), ClientError> {
        self.out.clear();
        match self.channels.get(&peer) {
            Some(ch) => ChannelData::encode(&mut self.out, *ch, data, false)?,
            None => {
                let mut w = MessageWriter::new(
                    &mut self.out,
                    MessageType::new(Method::SEND, Class::Indication),
                    TransactionId(rand::random()),
                );
                w.add_xor_peer_address(peer)?;
                w.add_data(data)?;
            }
        }
        self.socket.send_to(&self.out, self.server).await?;
        Ok(())
    }

    /// Send `data` to `peer` in a Send indication (never ChannelData); with `dont_fragment` the
    /// indication carries DONT-FRAGMENT and the server relays it with DF set.
    pub async fn send_indication(
        &mut self,
        data: &[u8],
        peer: SocketAddr,
        dont_fragment: bool,
    ) -> Result<(), ClientError> {
        self.out.clear();
        let mut w = MessageWriter::new(
            &mut self.out,
            MessageType::new(Method::SEND, Class::Indication),
            TransactionId(rand::random()),
        );
        w.add_xor_peer_address(peer)?;
        w.add_data(data)?;
        if dont_fragment {
            w.add_dont_fragment()?;
        }
        self.socket.send_to(&self.out, self.server).await?;
        Ok(())
    }

    /// Receive relayed data: returns (length copied into `buf`, peer address). Waits at most `wait`.
    pub async fn recv_from(
        &mut self,
        buf: &mut [u8],
        wait: Duration,
    ) -> Result<(usize, SocketAddr), ClientError> {
        if let Some((peer, data)) = self.queued.pop_front() {
            let n = data.len().min(buf.len());
            buf[..n].copy_from_slice(&data[..n]);
            return Ok((n, peer));
        }
        let deadline = Instant::now() + wait;
        loop {
            let (n, from) = timeout_at(deadline, self.socket.recv_from(&mut self.buf))
                .await
                .map_err(|_| ClientError::Timeout)??;
            if from != self.server {
                continue;
            }
            if let Some((peer, range)) = self.decode_data(n) {
                let len = range.len().min(buf.len());
                buf[..len].copy_from_slice(&self.buf[range.start..range.start + len]);
                return Ok((len, peer));
            }
        }
    }

    /// Send raw bytes to the server (tests, robustness checks).
    pub async fn send_raw(&self, data: &[u8]) -> Result<(), ClientError> {
        self.socket.send_to(data, self.server).await?;
        Ok(())
    }
}
