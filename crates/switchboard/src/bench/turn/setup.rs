//! Control plane of `switchboard bench turn`: a small blocking TURN client (Allocate with the 401/438
//! retry, ChannelBind, Refresh 0) on the very UDP socket the data phase then uses for ChannelData.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use stun::{
    long_term_key, Class, Message, MessageType, MessageWriter, Method, StunError, TransactionId,
};

/// How long one request may take, retransmissions included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// First retransmission timeout (doubled after each retransmission); generous for loaded machines.
const FIRST_RTO: Duration = Duration::from_millis(500);

/// One client 5-tuple talking to the TURN server.
pub struct Control {
    pub sock: UdpSocket,
    username: String,
    password: String,
    realm: Option<String>,
    nonce: Option<String>,
    key: Option<[u8; 16]>,
    buf: Vec<u8>,
    out: Vec<u8>,
}

impl Control {
    /// A UDP socket connected to `server` (bound on the server's IP when it is loopback).
    pub fn new(server: SocketAddr, username: &str, password: &str) -> io::Result<Control> {
        let local = match (server.ip().is_loopback(), server) {
            (true, s) => SocketAddr::new(s.ip(), 0),
            (false, SocketAddr::V4(_)) => SocketAddr::from(([0, 0, 0, 0], 0)),
            (false, SocketAddr::V6(_)) => SocketAddr::from(([0u16; 8], 0)),
        };
        let sock = UdpSocket::bind(local)?;
        sock.connect(server)?;
        Ok(Control {
            sock,
            username: username.to_string(),
            password: password.to_string(),
            realm: None,
            nonce: None,
            key: None,
            buf: vec![0u8; 2048],
            out: Vec::with_capacity(512),
        })
    }

    /// Send a request (authenticated once a challenge was seen) and return the success response's
    /// length in `self.buf`; retries once with fresh credentials after 401/438.
    fn transact(
        &mut self,
        method: Method,
        extra: &dyn Fn(&mut MessageWriter<'_>) -> Result<(), StunError>,
    ) -> anyhow::Result<usize> {
        for _ in 0..3 {
            let tid = TransactionId(rand::random());
            self.out.clear();
            {
                let mut w = MessageWriter::new(
                    &mut self.out,
                    MessageType::new(method, Class::Request),
                    tid,
                );
                extra(&mut w)?;
                if let (Some(realm), Some(nonce), Some(key)) = (&self.realm, &self.nonce, &self.key)
                {
                    w.add_username(&self.username)?;
                    w.add_realm(realm)?;
                    w.add_nonce(nonce)?;
                    w.add_message_integrity(key)?;
                }
                w.add_fingerprint()?;
            }
            let n = self.exchange(tid)?;
            let msg = Message::parse(&self.buf[..n])?;
            match msg.class() {
                Class::Success => return Ok(n),
                Class::Error => {
                    let (code, reason) = msg.error_code()?.unwrap_or((0, "no ERROR-CODE"));
                    if (code == 401 && self.key.is_none()) || code == 438 {
                        let realm = msg.realm()?.context("401 without REALM")?.to_string();
                        let nonce = msg.nonce()?.context("401 without NONCE")?.to_string();
                        self.key = Some(long_term_key(&self.username, &realm, &self.password));
                        self.realm = Some(realm);
                        self.nonce = Some(nonce);
                        continue;
                    }
                    bail!("{method:?} refused by the server: {code} {reason}");
                }
                _ => bail!("unexpected STUN class in the response to {method:?}"),
            }
        }
        bail!("{method:?}: authentication retries exhausted (wrong user/password/secret?)")
    }

    /// Send `self.out` until a response with `tid` arrives (other datagrams are skipped).
    fn exchange(&mut self, tid: TransactionId) -> anyhow::Result<usize> {
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        let mut rto = FIRST_RTO;
        loop {
            self.sock.send(&self.out)?;
            let resend_at = (Instant::now() + rto).min(deadline);
            rto *= 2;
            loop {
                let now = Instant::now();
                if now >= resend_at {
                    break;
                }
                self.sock.set_read_timeout(Some(resend_at - now))?;
                let n = match self.sock.recv(&mut self.buf) {
                    Ok(n) => n,
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                        ) =>
                    {
                        break
                    }
                    Err(e) => return Err(e).context("receiving from the TURN server"),
                };
                if let Ok(m) = Message::parse(&self.buf[..n]) {
                    if m.transaction_id() == tid
                        && matches!(m.class(), Class::Success | Class::Error)
                    {
                        return Ok(n);
                    }
                }
            }
            if Instant::now() >= deadline {
                bail!("no response from the TURN server");
            }
        }
    }

    /// Allocate a UDP relay; returns the relayed address.
    pub fn allocate(&mut self) -> anyhow::Result<SocketAddr> {
        let n = self.transact(Method::ALLOCATE, &|w| w.add_requested_transport(17))?;
        let m = Message::parse(&self.buf[..n])?;
        m.xor_relayed_address()?
            .context("Allocate response without XOR-RELAYED-ADDRESS")
    }

    /// Bind `channel` to `peer` (which also installs the permission for its IP).
    pub fn channel_bind(&mut self, channel: u16, peer: SocketAddr) -> anyhow::Result<()> {
        self.transact(Method::CHANNEL_BIND, &|w| {
            w.add_channel_number(channel)?;
            w.add_xor_peer_address(peer)
        })?;
        Ok(())
    }

    /// Delete the allocation (Refresh with LIFETIME 0).
    pub fn release(&mut self) -> anyhow::Result<()> {
        self.sock.set_nonblocking(false)?;
        self.transact(Method::REFRESH, &|w| w.add_lifetime(0))?;
        Ok(())
    }
}
