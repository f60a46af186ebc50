//! Rooms and sessions: who is in which room, relaying between participants, the reconnect grace period.
//!
//! The hub owns no sockets. Each connection registers an [`Outbox`]; the hub pushes serialized messages into it
//! and never waits on a slow client (a client whose queue is full is disconnected).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{mpsc, Notify};

use crate::media::{MediaServer, MediaSignal, MediaSink};
use crate::protocol::{
    ErrorCode, IceServer, ParticipantInfo, Permissions, ProtocolError, RoomInfo, ServerMessage,
    PROTOCOL_VERSION,
};
use crate::random_hex;
use crate::token::Claims;

/// Something to write to a client's socket.
#[derive(Debug, Clone)]
pub enum Outbound {
    /// A JSON text frame.
    Text(Arc<str>),
    /// Close the socket with this code and reason.
    Close(u16, &'static str),
}

/// The sending half a connection gives the hub.
#[derive(Debug, Clone)]
pub struct Outbox {
    id: u64,
    tx: mpsc::Sender<Outbound>,
    kill: Arc<Notify>,
}

impl Outbox {
    /// A new outbox with room for `capacity` queued messages; returns the receiving half and the kill signal
    /// (notified when the hub gives up on this connection).
    pub fn new(id: u64, capacity: usize) -> (Outbox, mpsc::Receiver<Outbound>, Arc<Notify>) {
        let (tx, rx) = mpsc::channel(capacity);
        let kill = Arc::new(Notify::new());
        (
            Outbox {
                id,
                tx,
                kill: kill.clone(),
            },
            rx,
            kill,
        )
    }

    /// Queue `msg`; a full queue means the client does not read: it is disconnected.
    pub fn push(&self, msg: Outbound) {
        if self.tx.try_send(msg).is_err() {
            metrics::counter!("signal_slow_consumer_disconnects_total").increment(1);
            self.kill.notify_one();
        }
    }

    fn text(&self, text: &Arc<str>) {
        self.push(Outbound::Text(text.clone()));
    }
}

/// Room settings the hub enforces.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Largest room (participants).
    pub max_participants: usize,
    /// How long a dropped participant stays in its room, waiting to resume.
    pub reconnect_grace: Duration,
    /// Mode of new rooms (`mesh`, `sfu`, `auto`).
    pub default_mode: String,
    /// Per-room modes overriding `default_mode`.
    pub room_modes: HashMap<String, String>,
    /// An `auto` room moves from mesh to the SFU when a join makes it larger than this.
    pub auto_threshold: usize,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            max_participants: 16,
            reconnect_grace: Duration::from_secs(20),
            default_mode: "mesh".into(),
            room_modes: HashMap::new(),
            auto_threshold: 4,
        }
    }
}

/// Produces the ICE servers (with fresh TURN credentials) for a participant id.
pub type IceServerSource = Arc<dyn Fn(&str) -> Vec<IceServer> + Send + Sync>;

struct Participant {
    info: ParticipantInfo,
    permissions: Permissions,
    resume_token: String,
    conn: Option<Outbox>,
    /// Incremented on each (re)connection; a grace timer only expires the generation it was started for.
    generation: u64,
}

struct Room {
    /// The mode in effect: `mesh` or `sfu` (an `auto` room starts as `mesh`).
    mode: String,
    /// An `auto` room: moves to `sfu` once it passes `auto_threshold` participants (and stays there).
    auto: bool,
    participants: BTreeMap<String, Participant>,
}

#[derive(Default)]
struct State {
    rooms: HashMap<String, Room>,
    resume: HashMap<String, (String, String)>,
}

/// Where a joined connection lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seat {
    /// Room name.
    pub room: String,
    /// Participant id.
    pub id: String,
}

/// The room registry. Cheap to share (`Arc<Hub>`).
pub struct Hub {
    state: Mutex<State>,
    config: HubConfig,
    ice: IceServerSource,
    /// Push fresh ICE servers (`ice_servers`) to each connected participant this often.
    ice_refresh: OnceLock<Duration>,
    media: OnceLock<Arc<dyn MediaServer>>,
    this: OnceLock<std::sync::Weak<Hub>>,
}

/// Work to do after the hub's lock is released (calls into the media server).
#[derive(Default)]
struct After {
    media_joins: Vec<(String, String, Permissions)>,
    media_leaves: Vec<(String, String)>,
    /// A new participant was seated (not a resume).
    fresh_join: bool,
}

fn room_info(name: &str, room: &Room) -> RoomInfo {
    RoomInfo {
        name: name.to_owned(),
        mode: room.mode.clone(),
    }
}

impl Hub {
    /// A hub with `config`, asking `ice` for each participant's ICE servers.
    pub fn new(config: HubConfig, ice: IceServerSource) -> Arc<Hub> {
        let hub = Arc::new(Hub {
            state: Mutex::new(State::default()),
            config,
            ice,
            ice_refresh: OnceLock::new(),
            media: OnceLock::new(),
            this: OnceLock::new(),
        });
        let _ = hub.this.set(Arc::downgrade(&hub));
        hub
    }

    /// Push fresh ICE servers to every participant each `every` (at least 1 s), so time-limited TURN
    /// credentials are renewed before they expire (set it below their lifetime, e.g. 80 %). Set once; later
    /// calls are ignored. Without it, credentials are only renewed in `joined` (join and resume).
    pub fn set_ice_refresh(&self, every: Duration) {
        let _ = self.ice_refresh.set(every.max(Duration::from_secs(1)));
    }

    /// Pushes `ice_servers` to participant `id` of `room` every `ice_refresh` while it is in the room (while
    /// its socket is down nothing is sent: the `joined` of its resume brings fresh ones).
    fn start_ice_refresh(&self, room: &str, id: &str) {
        let Some(&every) = self.ice_refresh.get() else {
            return;
        };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let weak = self.this.get().cloned().unwrap_or_default();
        let (room, id) = (room.to_owned(), id.to_owned());
        rt.spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(hub) = weak.upgrade() else { return };
                let conn = {
                    let st = hub.lock();
                    match st.rooms.get(&room).and_then(|r| r.participants.get(&id)) {
                        Some(p) => p.conn.clone(),
                        None => return, // left
                    }
                };
                if let Some(c) = conn {
                    let msg = ServerMessage::IceServers {
                        ice_servers: (hub.ice)(&id),
                    };
                    c.push(Outbound::Text(msg.to_text().into()));
                    metrics::counter!("signal_ice_refreshes_total").increment(1);
                }
            }
        });
    }

    /// Attach the media server of `sfu` rooms (once; later calls are ignored).
    pub fn set_media_server(&self, media: Arc<dyn MediaServer>) {
        let _ = self.media.set(media);
    }

    fn run_after(&self, after: After) {
        let Some(media) = self.media.get() else {
            return;
        };
        for (room, id) in after.media_leaves {
            media.leave(&room, &id);
        }
        let weak = self.this.get().cloned().unwrap_or_default();
        for (room, id, perms) in after.media_joins {
            let sink = MediaSink {
                hub: weak.clone(),
                room: room.clone(),
                participant: id.clone(),
            };
            media.join(&room, &id, perms, sink);
        }
    }

    /// Queue `msg` for participant `id` of `room`, if connected.
    pub(crate) fn deliver(&self, room: &str, id: &str, msg: &ServerMessage) -> bool {
        self.deliver_text(room, id, msg.to_text().into())
    }

    /// Queue an already serialized message for participant `id` of `room`, if connected.
    pub(crate) fn deliver_text(&self, room: &str, id: &str, text: Arc<str>) -> bool {
        let st = self.lock();
        match st
            .rooms
            .get(room)
            .and_then(|r| r.participants.get(id))
            .and_then(|p| p.conn.as_ref())
        {
            Some(c) => {
                c.push(Outbound::Text(text));
                true
            }
            None => false,
        }
    }

    /// A negotiation message for the room's media server (`"to": "sfu"`).
    pub fn media_signal(&self, seat: &Seat, msg: MediaSignal) -> Result<(), ProtocolError> {
        let is_sfu = self
            .lock()
            .rooms
            .get(&seat.room)
            .is_some_and(|r| r.mode == "sfu");
        match (is_sfu, self.media.get()) {
            (true, Some(media)) => {
                media.signal(&seat.room, &seat.id, msg);
                Ok(())
            }
            _ => Err(ProtocolError::new(
                ErrorCode::UnknownParticipant,
                format!("room `{}` has no SFU (it is not an sfu room)", seat.room),
            )),
        }
    }

    fn mode_for(&self, room: &str) -> String {
        self.config
            .room_modes
            .get(room)
            .cloned()
            .unwrap_or_else(|| self.config.default_mode.clone())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that matters more than
        // refusing all service, so recover the guard.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Number of rooms and participants (for metrics and tests).
    pub fn counts(&self) -> (usize, usize) {
        let st = self.lock();
        let p = st.rooms.values().map(|r| r.participants.len()).sum();
        (st.rooms.len(), p)
    }

    fn update_gauges(st: &State) {
        metrics::gauge!("signal_rooms").set(st.rooms.len() as f64);
        let p: usize = st.rooms.values().map(|r| r.participants.len()).sum();
        metrics::gauge!("signal_participants").set(p as f64);
    }

    /// Join (or resume) with verified `claims`. On success the `joined` message has been queued on `outbox`.
    pub fn join(
        &self,
        claims: &Claims,
        resume_token: Option<&str>,
        metadata: Option<Value>,
        outbox: Outbox,
    ) -> Result<Seat, ProtocolError> {
        let mut after = After::default();
        let res = self.join_locked(claims, resume_token, metadata, outbox, &mut after);
        let fresh = after.fresh_join;
        self.run_after(after);
        if let (Ok(seat), true) = (&res, fresh) {
            // One renewal loop per participant; a resume keeps it.
            self.start_ice_refresh(&seat.room, &seat.id);
        }
        res
    }

    fn join_locked(
        &self,
        claims: &Claims,
        resume_token: Option<&str>,
        metadata: Option<Value>,
        outbox: Outbox,
        after: &mut After,
    ) -> Result<Seat, ProtocolError> {
        let room_name = claims.video.room.clone().unwrap_or_default();
        if !claims.video.room_join {
            return Err(ProtocolError::new(
                ErrorCode::Forbidden,
                "token lacks the roomJoin grant",
            ));
        }
        let mut st = self.lock();
        if let Some(seat) = resume_token.and_then(|t| st.resume.get(t).cloned()) {
            let (room, id) = seat;
            let matches = room == room_name
                && st
                    .rooms
                    .get(&room)
                    .and_then(|r| r.participants.get(&id))
                    .is_some_and(|p| p.info.identity == claims.sub);
            if matches {
                return Ok(self.resume(&mut st, room, id, outbox));
            }
        }
        // A fresh join. The same identity already present is replaced.
        let grace_ms = self.config.reconnect_grace.as_millis() as u64;
        let max = self.config.max_participants;
        let mode = self.mode_for(&room_name);
        let room = st.rooms.entry(room_name.clone()).or_insert_with(|| Room {
            auto: mode == "auto",
            mode: if mode == "auto" { "mesh".into() } else { mode },
            participants: BTreeMap::new(),
        });
        let replaced: Vec<String> = room
            .participants
            .iter()
            .filter(|(_, p)| p.info.identity == claims.sub)
            .map(|(id, _)| id.clone())
            .collect();
        if room.participants.len() - replaced.len() >= max {
            let empty = room.participants.is_empty();
            if empty {
                st.rooms.remove(&room_name);
            }
            return Err(ProtocolError::new(
                ErrorCode::RoomFull,
                format!("room `{room_name}` has its maximum of {max} participants"),
            ));
        }
        for old in replaced {
            self.remove_locked(&mut st, &room_name, &old, "replaced", after);
        }
        let id = format!("p_{}", random_hex(6));
        let resume = random_hex(16);
        let info = ParticipantInfo {
            id: id.clone(),
            identity: claims.sub.clone(),
            name: claims.name.clone().unwrap_or_else(|| claims.sub.clone()),
            metadata: metadata.unwrap_or_else(|| Value::Object(Default::default())),
        };
        let permissions = Permissions {
            can_publish: claims.video.can_publish.unwrap_or(true),
            can_subscribe: claims.video.can_subscribe.unwrap_or(true),
            can_publish_data: claims.video.can_publish_data.unwrap_or(true),
        };
        let Some(room) = st.rooms.get_mut(&room_name) else {
            return Err(ProtocolError::new(ErrorCode::Internal, "room vanished"));
        };
        if room.auto
            && room.mode == "mesh"
            && room.participants.len() + 1 > self.config.auto_threshold
            && self.media.get().is_some()
        {
            // The newcomer makes the room too large for a mesh: everyone moves to the SFU before hearing of it
            // (it joins straight into an `sfu` room). Nobody leaves: each participant closes its mesh peer
            // connections and negotiates with the SFU.
            room.mode = "sfu".into();
            let text: Arc<str> = serde_json::json!({"type": "room_mode", "mode": "sfu"})
                .to_string()
                .into();
            for p in room.participants.values() {
                if let Some(c) = &p.conn {
                    c.text(&text);
                }
                after
                    .media_joins
                    .push((room_name.clone(), p.info.id.clone(), p.permissions));
            }
            metrics::counter!("signal_room_mode_switches_total").increment(1);
            tracing::info!(room = %room_name, participants = room.participants.len() + 1, "auto room moves to the SFU");
        }
        let others: Vec<ParticipantInfo> =
            room.participants.values().map(|p| p.info.clone()).collect();
        let announce: Arc<str> = ServerMessage::ParticipantJoined {
            participant: info.clone(),
        }
        .to_text()
        .into();
        for p in room.participants.values() {
            if let Some(c) = &p.conn {
                c.text(&announce);
            }
        }
        let joined = ServerMessage::Joined {
            protocol: PROTOCOL_VERSION,
            participant: info.clone(),
            room: room_info(&room_name, room),
            participants: others,
            ice_servers: (self.ice)(&id),
            resume_token: resume.clone(),
            resumed: false,
            reconnect_grace_ms: grace_ms,
            permissions,
        };
        outbox.push(Outbound::Text(joined.to_text().into()));
        room.participants.insert(
            id.clone(),
            Participant {
                info,
                permissions,
                resume_token: resume.clone(),
                conn: Some(outbox),
                generation: 0,
            },
        );
        if room.mode == "sfu" {
            after
                .media_joins
                .push((room_name.clone(), id.clone(), permissions));
        }
        st.resume.insert(resume, (room_name.clone(), id.clone()));
        after.fresh_join = true;
        Self::update_gauges(&st);
        metrics::counter!("signal_joins_total", "resumed" => "false").increment(1);
        tracing::info!(room = %room_name, participant = %id, identity = %claims.sub, "participant joined");
        Ok(Seat {
            room: room_name,
            id,
        })
    }

    fn resume(&self, st: &mut State, room_name: String, id: String, outbox: Outbox) -> Seat {
        let grace_ms = self.config.reconnect_grace.as_millis() as u64;
        let new_token = random_hex(16);
        let ice = (self.ice)(&id);
        let mut old_token = None;
        if let Some(room) = st.rooms.get_mut(&room_name) {
            let others: Vec<ParticipantInfo> = room
                .participants
                .values()
                .filter(|p| p.info.id != id)
                .map(|p| p.info.clone())
                .collect();
            let info = room_info(&room_name, room);
            if let Some(p) = room.participants.get_mut(&id) {
                if let Some(old) = p.conn.take() {
                    old.push(Outbound::Close(4000, "resumed elsewhere"));
                }
                p.generation += 1;
                old_token = Some(std::mem::replace(&mut p.resume_token, new_token.clone()));
                let joined = ServerMessage::Joined {
                    protocol: PROTOCOL_VERSION,
                    participant: p.info.clone(),
                    room: info,
                    participants: others,
                    ice_servers: ice,
                    resume_token: new_token.clone(),
                    resumed: true,
                    reconnect_grace_ms: grace_ms,
                    permissions: p.permissions,
                };
                outbox.push(Outbound::Text(joined.to_text().into()));
                p.conn = Some(outbox);
            }
        }
        if let Some(t) = old_token {
            st.resume.remove(&t);
        }
        st.resume.insert(new_token, (room_name.clone(), id.clone()));
        metrics::counter!("signal_joins_total", "resumed" => "true").increment(1);
        tracing::info!(room = %room_name, participant = %id, "participant resumed");
        Seat {
            room: room_name,
            id,
        }
    }

    /// Relay `msg` from `from` to participant `to` of the same room.
    pub fn relay(&self, seat: &Seat, to: &str, msg: &ServerMessage) -> Result<(), ProtocolError> {
        let st = self.lock();
        let target = st
            .rooms
            .get(&seat.room)
            .and_then(|r| r.participants.get(to))
            .filter(|_| to != seat.id);
        match target {
            Some(p) => {
                if let Some(c) = &p.conn {
                    c.push(Outbound::Text(msg.to_text().into()));
                }
                Ok(())
            }
            None => Err(ProtocolError::new(
                ErrorCode::UnknownParticipant,
                format!(
                    "no participant `{}` in this room",
                    to.chars().take(64).collect::<String>()
                ),
            )),
        }
    }

    /// Change name and/or metadata; `participant_updated` goes to everyone in the room, the sender included.
    pub fn update(&self, seat: &Seat, name: Option<String>, metadata: Option<Value>) {
        let st = &mut *self.lock();
        let Some(room) = st.rooms.get_mut(&seat.room) else {
            return;
        };
        let Some(p) = room.participants.get_mut(&seat.id) else {
            return;
        };
        if let Some(n) = name {
            p.info.name = n;
        }
        if let Some(m) = metadata {
            p.info.metadata = m;
        }
        let text: Arc<str> = ServerMessage::ParticipantUpdated {
            participant: p.info.clone(),
        }
        .to_text()
        .into();
        for p in room.participants.values() {
            if let Some(c) = &p.conn {
                c.text(&text);
            }
        }
    }

    /// Remove the participant now (`leave`, kick).
    pub fn leave(&self, seat: &Seat, reason: &'static str) {
        let mut after = After::default();
        {
            let mut st = self.lock();
            self.remove_locked(&mut st, &seat.room, &seat.id, reason, &mut after);
        }
        self.run_after(after);
    }

    fn remove_locked(
        &self,
        st: &mut State,
        room_name: &str,
        id: &str,
        reason: &'static str,
        after: &mut After,
    ) {
        let Some(room) = st.rooms.get_mut(room_name) else {
            return;
        };
        let Some(p) = room.participants.remove(id) else {
            return;
        };
        if reason == "replaced" {
            if let Some(c) = &p.conn {
                let e = ServerMessage::error(&ProtocolError::new(
                    ErrorCode::Replaced,
                    "the same identity joined the room from another connection",
                ));
                c.push(Outbound::Text(e.to_text().into()));
                c.push(Outbound::Close(4001, "replaced"));
            }
        }
        let text: Arc<str> = ServerMessage::ParticipantLeft {
            id: id.to_owned(),
            reason,
        }
        .to_text()
        .into();
        for other in room.participants.values() {
            if let Some(c) = &other.conn {
                c.text(&text);
            }
        }
        if room.mode == "sfu" {
            after
                .media_leaves
                .push((room_name.to_owned(), id.to_owned()));
        }
        let empty = room.participants.is_empty();
        st.resume.remove(&p.resume_token);
        if empty {
            st.rooms.remove(room_name);
        }
        Self::update_gauges(st);
        tracing::info!(room = %room_name, participant = %id, reason, "participant left");
    }

    /// The connection `conn_id` of `seat` dropped without `leave`: keep the seat for the grace period.
    pub fn disconnected(self: &Arc<Self>, seat: &Seat, conn_id: u64) {
        let generation = {
            let mut st = self.lock();
            let Some(p) = st
                .rooms
                .get_mut(&seat.room)
                .and_then(|r| r.participants.get_mut(&seat.id))
            else {
                return;
            };
            match &p.conn {
                Some(c) if c.id == conn_id => p.conn = None,
                _ => return, // already resumed on another connection
            }
            p.generation
        };
        let hub = self.clone();
        let seat = seat.clone();
        let grace = self.config.reconnect_grace;
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            let mut after = After::default();
            {
                let mut st = hub.lock();
                let expired = st
                    .rooms
                    .get(&seat.room)
                    .and_then(|r| r.participants.get(&seat.id))
                    .is_some_and(|p| p.conn.is_none() && p.generation == generation);
                if expired {
                    hub.remove_locked(&mut st, &seat.room, &seat.id, "timeout", &mut after);
                }
            }
            hub.run_after(after);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::VideoGrant;

    fn hub(max: usize, grace_ms: u64) -> Arc<Hub> {
        Hub::new(
            HubConfig {
                max_participants: max,
                reconnect_grace: Duration::from_millis(grace_ms),
                ..HubConfig::default()
            },
            Arc::new(|_| Vec::new()),
        )
    }

    fn claims(identity: &str, room: &str) -> Claims {
        Claims::new(identity, VideoGrant::join(room), Duration::from_secs(60))
    }

    fn drain(rx: &mut mpsc::Receiver<Outbound>) -> Vec<Value> {
        let mut out = Vec::new();
        while let Ok(m) = rx.try_recv() {
            if let Outbound::Text(t) = m {
                out.push(serde_json::from_str(&t).unwrap());
            }
        }
        out
    }

    #[tokio::test]
    async fn second_joiner_gets_roster_and_first_sees_participant_joined() {
        let h = hub(16, 1000);
        let (a, mut ra, _) = Outbox::new(1, 16);
        let (b, mut rb, _) = Outbox::new(2, 16);
        let sa = h.join(&claims("alice", "r"), None, None, a).unwrap();
        let sb = h.join(&claims("bob", "r"), None, None, b).unwrap();
        let jb = drain(&mut rb);
        assert_eq!(jb[0]["type"], "joined");
        assert_eq!(jb[0]["participants"][0]["id"], sa.id.as_str());
        let ja = drain(&mut ra);
        assert_eq!(ja[1]["type"], "participant_joined");
        assert_eq!(ja[1]["participant"]["id"], sb.id.as_str());
    }

    #[tokio::test]
    async fn relay_only_reaches_participants_of_the_same_room() {
        let h = hub(16, 1000);
        let (a, _ra, _) = Outbox::new(1, 16);
        let (b, mut rb, _) = Outbox::new(2, 16);
        let (c, _rc, _) = Outbox::new(3, 16);
        let sa = h.join(&claims("alice", "r1"), None, None, a).unwrap();
        let sb = h.join(&claims("bob", "r1"), None, None, b).unwrap();
        let sc = h.join(&claims("carol", "r2"), None, None, c).unwrap();
        drain(&mut rb);
        let msg = ServerMessage::Offer {
            from: sa.id.clone(),
            sdp: "v=0".into(),
        };
        h.relay(&sa, &sb.id, &msg).unwrap();
        assert_eq!(drain(&mut rb)[0]["from"], sa.id.as_str());
        let err = h.relay(&sa, &sc.id, &msg).unwrap_err();
        assert_eq!(err.code, ErrorCode::UnknownParticipant);
        assert_eq!(
            h.relay(&sa, &sa.id, &msg).unwrap_err().code,
            ErrorCode::UnknownParticipant
        );
    }

    #[tokio::test(start_paused = true)]
    async fn fresh_ice_servers_are_pushed_every_refresh_period_until_the_participant_leaves() {
        let minted = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let m = minted.clone();
        let h = Hub::new(
            HubConfig::default(),
            Arc::new(move |id: &str| {
                let n = m.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                vec![IceServer {
                    urls: vec!["turn:127.0.0.1:3478".into()],
                    username: Some(format!("{n}:{id}")),
                    credential: Some("c".into()),
                }]
            }),
        );
        h.set_ice_refresh(Duration::from_secs(8));
        let (a, mut ra, _) = Outbox::new(1, 16);
        let sa = h.join(&claims("alice", "r"), None, None, a).unwrap();
        let joined = drain(&mut ra);
        assert_eq!(
            joined[0]["ice_servers"][0]["username"],
            format!("0:{}", sa.id)
        );
        tokio::time::sleep(Duration::from_secs(7)).await;
        assert!(drain(&mut ra).is_empty(), "pushed before the period");
        for n in 1..=3 {
            tokio::time::sleep(Duration::from_secs(8)).await;
            let got = drain(&mut ra);
            assert_eq!(got.len(), 1, "{got:?}");
            assert_eq!(got[0]["type"], "ice_servers");
            assert_eq!(
                got[0]["ice_servers"][0]["username"],
                format!("{n}:{}", sa.id)
            );
        }
        h.leave(&sa, "left");
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(
            minted.load(std::sync::atomic::Ordering::SeqCst),
            4,
            "minted after leaving"
        );
    }

    #[tokio::test]
    async fn full_room_refuses_join() {
        let h = hub(2, 1000);
        for (i, who) in ["a", "b"].iter().enumerate() {
            let (o, _r, _) = Outbox::new(i as u64, 16);
            h.join(&claims(who, "r"), None, None, o).unwrap();
        }
        let (o, _r, _) = Outbox::new(9, 16);
        assert_eq!(
            h.join(&claims("c", "r"), None, None, o).unwrap_err().code,
            ErrorCode::RoomFull
        );
    }

    #[tokio::test]
    async fn resume_within_grace_keeps_id_and_others_see_no_leave() {
        let h = hub(16, 300);
        let (a, mut ra, _) = Outbox::new(1, 16);
        let (b, _rb, _) = Outbox::new(2, 16);
        h.join(&claims("alice", "r"), None, None, a).unwrap();
        let sb = h.join(&claims("bob", "r"), None, None, b).unwrap();
        drain(&mut ra);
        h.disconnected(&sb, 2);
        let (b2, mut rb2, _) = Outbox::new(3, 16);
        let (_, first) = {
            let st = h.lock();
            let p = &st.rooms["r"].participants[&sb.id];
            (p.generation, p.resume_token.clone())
        };
        let s2 = h.join(&claims("bob", "r"), Some(&first), None, b2).unwrap();
        assert_eq!(s2, sb);
        let j = drain(&mut rb2);
        assert_eq!(j[0]["resumed"], true);
        assert_ne!(j[0]["resume_token"], first.as_str());
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(drain(&mut ra).is_empty(), "alice saw something");
        assert_eq!(h.counts().1, 2);
    }

    #[tokio::test]
    async fn grace_expiry_announces_timeout() {
        let h = hub(16, 100);
        let (a, mut ra, _) = Outbox::new(1, 16);
        let (b, _rb, _) = Outbox::new(2, 16);
        h.join(&claims("alice", "r"), None, None, a).unwrap();
        let sb = h.join(&claims("bob", "r"), None, None, b).unwrap();
        drain(&mut ra);
        h.disconnected(&sb, 2);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let got = drain(&mut ra);
        assert_eq!(got[0]["type"], "participant_left");
        assert_eq!(got[0]["reason"], "timeout");
    }

    #[tokio::test]
    async fn same_identity_fresh_join_replaces_old_session() {
        let h = hub(16, 1000);
        let (a, mut ra, _) = Outbox::new(1, 16);
        let (b, mut rb, _) = Outbox::new(2, 16);
        let (a2, _ra2, _) = Outbox::new(3, 16);
        let sa = h.join(&claims("alice", "r"), None, None, a).unwrap();
        h.join(&claims("bob", "r"), None, None, b).unwrap();
        drain(&mut ra);
        drain(&mut rb);
        h.join(&claims("alice", "r"), None, None, a2).unwrap();
        let to_old = drain(&mut ra);
        assert_eq!(to_old[0]["code"], "replaced");
        let to_bob = drain(&mut rb);
        assert_eq!(to_bob[0]["type"], "participant_left");
        assert_eq!(to_bob[0]["id"], sa.id.as_str());
        assert_eq!(to_bob[0]["reason"], "replaced");
        assert_eq!(to_bob[1]["type"], "participant_joined");
    }

    #[tokio::test]
    async fn slow_consumer_is_killed_not_waited_for() {
        let h = hub(16, 1000);
        let (a, _ra, kill) = Outbox::new(1, 2);
        h.join(&claims("alice", "r"), None, None, a).unwrap();
        for i in 0..5 {
            let (o, _r, _) = Outbox::new(10 + i, 16);
            h.join(&claims(&format!("p{i}"), "r"), None, None, o)
                .unwrap();
        }
        tokio::time::timeout(Duration::from_secs(1), kill.notified())
            .await
            .expect("kill notified");
    }

    #[derive(Default)]
    struct Recorder {
        calls: Mutex<Vec<String>>,
        sinks: Mutex<Vec<MediaSink>>,
    }

    impl MediaServer for Recorder {
        fn join(&self, room: &str, participant: &str, _p: Permissions, sink: MediaSink) {
            self.calls
                .lock()
                .unwrap()
                .push(format!("join {room} {participant}"));
            self.sinks.lock().unwrap().push(sink);
        }
        fn signal(&self, room: &str, participant: &str, msg: MediaSignal) {
            self.calls
                .lock()
                .unwrap()
                .push(format!("signal {room} {participant} {msg:?}"));
        }
        fn leave(&self, room: &str, participant: &str) {
            self.calls
                .lock()
                .unwrap()
                .push(format!("leave {room} {participant}"));
        }
    }

    #[tokio::test]
    async fn auto_room_moves_to_the_sfu_when_it_passes_the_threshold() {
        let config = HubConfig {
            default_mode: "auto".into(),
            auto_threshold: 2,
            ..HubConfig::default()
        };
        let h = Hub::new(config, Arc::new(|_| Vec::new()));
        let rec = Arc::new(Recorder::default());
        h.set_media_server(rec.clone());
        let (a, mut ra, _) = Outbox::new(1, 16);
        let (b, mut rb, _) = Outbox::new(2, 16);
        let (c, mut rc, _) = Outbox::new(3, 16);
        let sa = h.join(&claims("alice", "r"), None, None, a).unwrap();
        let sb = h.join(&claims("bob", "r"), None, None, b).unwrap();
        assert_eq!(drain(&mut ra)[0]["room"]["mode"], "mesh");
        assert_eq!(drain(&mut rb)[0]["room"]["mode"], "mesh");
        assert!(
            rec.calls.lock().unwrap().is_empty(),
            "a mesh room uses no SFU"
        );
        assert_eq!(
            h.media_signal(&sa, MediaSignal::Offer("v=0".into()))
                .unwrap_err()
                .code,
            ErrorCode::UnknownParticipant
        );
        let sc = h.join(&claims("carol", "r"), None, None, c).unwrap();
        let to_a = drain(&mut ra);
        assert_eq!(to_a[0]["type"], "room_mode");
        assert_eq!(to_a[0]["mode"], "sfu");
        assert_eq!(to_a[1]["type"], "participant_joined");
        assert_eq!(drain(&mut rb)[0]["type"], "room_mode");
        assert_eq!(drain(&mut rc)[0]["room"]["mode"], "sfu");
        let mut joins = rec.calls.lock().unwrap().clone();
        joins.sort();
        let mut want = vec![
            format!("join r {}", sa.id),
            format!("join r {}", sb.id),
            format!("join r {}", sc.id),
        ];
        want.sort();
        assert_eq!(joins, want, "everyone is handed to the SFU, nobody left");
        h.media_signal(&sa, MediaSignal::Offer("v=0".into()))
            .unwrap();
        // It stays an SFU room when it shrinks.
        h.leave(&sc, "left");
        h.leave(&sb, "left");
        let (d, mut rd, _) = Outbox::new(4, 16);
        h.join(&claims("dave", "r"), None, None, d).unwrap();
        assert_eq!(drain(&mut rd)[0]["room"]["mode"], "sfu");
    }

    #[tokio::test]
    async fn sfu_rooms_hand_negotiation_to_the_media_server_and_mesh_rooms_do_not() {
        let mut config = HubConfig::default();
        config.room_modes.insert("big".into(), "sfu".into());
        let h = Hub::new(config, Arc::new(|_| Vec::new()));
        let rec = Arc::new(Recorder::default());
        h.set_media_server(rec.clone());
        let (a, mut ra, _) = Outbox::new(1, 16);
        let (m, _rm, _) = Outbox::new(2, 16);
        let sa = h.join(&claims("alice", "big"), None, None, a).unwrap();
        let sm = h.join(&claims("mona", "small"), None, None, m).unwrap();
        assert_eq!(drain(&mut ra)[0]["room"]["mode"], "sfu");

        h.media_signal(&sa, MediaSignal::Offer("v=0".into()))
            .unwrap();
        let err = h
            .media_signal(&sm, MediaSignal::Offer("v=0".into()))
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::UnknownParticipant);

        let sink = rec.sinks.lock().unwrap()[0].clone();
        assert!(sink.send(MediaSignal::Answer("v=0 answer".into())));
        let got = drain(&mut ra);
        assert_eq!(got[0]["type"], "answer");
        assert_eq!(got[0]["from"], "sfu");

        h.leave(&sa, "left");
        assert!(
            !sink.send(MediaSignal::Offer("late".into())),
            "gone participant"
        );
        let calls = rec.calls.lock().unwrap().clone();
        assert_eq!(
            calls,
            vec![
                format!("join big {}", sa.id),
                format!("signal big {} Offer(\"v=0\")", sa.id),
                format!("leave big {}", sa.id),
            ]
        );
    }
}
