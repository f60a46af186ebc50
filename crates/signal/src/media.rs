//! The hook between signaling and a server-side media endpoint (the SFU) for rooms in `sfu` mode.
//!
//! In an `sfu` room each participant negotiates one peer connection with the server: it sends `offer`,
//! `answer` and `candidate` messages with `"to": "sfu"` and receives them with `"from": "sfu"`. The hub hands
//! those to the [`MediaServer`] and gives it a [`MediaSink`] per participant to send its own (re-)offers,
//! answers and candidates back.

use std::sync::Weak;

use serde_json::Value;

use crate::hub::Hub;
use crate::protocol::{Permissions, ServerMessage};

/// The participant id the SFU uses in `to`/`from`.
pub const SFU_ID: &str = "sfu";

/// A negotiation message between a participant and the media server.
#[derive(Debug, Clone, PartialEq)]
pub enum MediaSignal {
    /// SDP offer.
    Offer(String),
    /// SDP answer.
    Answer(String),
    /// ICE candidate object (`{candidate, sdp_mid, sdp_mline_index, username_fragment}`) or `null`.
    Candidate(Value),
}

impl MediaSignal {
    /// The message as relayed to its recipient, `from` the sender.
    pub fn into_server_message(self, from: String) -> ServerMessage {
        match self {
            MediaSignal::Offer(sdp) => ServerMessage::Offer { from, sdp },
            MediaSignal::Answer(sdp) => ServerMessage::Answer { from, sdp },
            MediaSignal::Candidate(candidate) => ServerMessage::Candidate { from, candidate },
        }
    }
}

/// A server-side media endpoint for `sfu` rooms. Called outside the hub's lock; implementations must not
/// block for long (hand work to their own tasks).
pub trait MediaServer: Send + Sync + 'static {
    /// `participant` joined `room` (an `sfu` room); `sink` delivers messages to it for as long as it stays.
    fn join(&self, room: &str, participant: &str, permissions: Permissions, sink: MediaSink);
    /// The participant sent a negotiation message addressed to `"sfu"`.
    fn signal(&self, room: &str, participant: &str, msg: MediaSignal);
    /// The participant left the room (leave, grace period over, replaced, kicked).
    fn leave(&self, room: &str, participant: &str);
}

/// Sends negotiation messages from the media server to one participant.
#[derive(Clone, Debug)]
pub struct MediaSink {
    pub(crate) hub: Weak<Hub>,
    pub(crate) room: String,
    pub(crate) participant: String,
}

impl MediaSink {
    /// Deliver `msg` (as `from: "sfu"`). Returns false when the participant is gone or not connected right
    /// now (messages are not queued across a reconnect: re-offer after the participant resumes).
    pub fn send(&self, msg: MediaSignal) -> bool {
        let Some(hub) = self.hub.upgrade() else {
            return false;
        };
        let m = msg.into_server_message(SFU_ID.into());
        hub.deliver(&self.room, &self.participant, &m)
    }

    /// Send any server message (e.g. an application event) to the participant.
    pub fn send_message(&self, msg: &ServerMessage) -> bool {
        self.hub
            .upgrade()
            .is_some_and(|hub| hub.deliver(&self.room, &self.participant, msg))
    }

    /// Send an event that is not a [`ServerMessage`] variant (e.g. `{"type":"active_speaker",...}`), serialized
    /// once by the caller and shared among recipients.
    pub fn send_text(&self, text: std::sync::Arc<str>) -> bool {
        self.hub
            .upgrade()
            .is_some_and(|hub| hub.deliver_text(&self.room, &self.participant, text))
    }

    /// The room name.
    pub fn room(&self) -> &str {
        &self.room
    }

    /// The participant id.
    pub fn participant(&self) -> &str {
        &self.participant
    }
}
