//! The error type of the client library.

/// Everything that can go wrong in the client library.
///
/// ```
/// let err = client::Error::NoPeers;
/// assert_eq!(err.to_string(), "nobody to send the file to");
/// ```
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server URL could not be understood.
    #[error("invalid server URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The signaling server could not be reached (connection refused, DNS, TLS, HTTP upgrade failed).
    #[error("cannot reach the signaling server at {url}: {reason}")]
    Unreachable {
        /// The WebSocket or HTTP URL that was tried.
        url: String,
        /// The underlying error.
        reason: String,
    },
    /// The server refused the `join` (bad token, room full, ...). `code` is the protocol error code.
    #[error("the server refused to join: {code}: {message}")]
    Refused {
        /// Protocol error code, e.g. `unauthorized`, `forbidden`, `room_full`.
        code: String,
        /// Human-readable message from the server.
        message: String,
    },
    /// The signaling socket closed before `joined` arrived.
    #[error("the signaling server closed the connection before the join completed")]
    ClosedBeforeJoin,
    /// Something did not happen in time.
    #[error("timed out: {0}")]
    Timeout(&'static str),
    /// The room was left (or its background task ended); the handle can no longer be used.
    #[error("the room session is closed")]
    RoomClosed,
    /// `send_file` found nobody to send to.
    #[error("nobody to send the file to")]
    NoPeers,
    /// A malformed message or an HTTP answer that makes no sense.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// Local I/O (reading a file, binding a socket).
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// TLS setup failed (an unreadable `--ca-file`, a host name that cannot be a TLS server name).
    #[error("TLS: {0}")]
    Tls(String),
    /// The WebRTC stack (str0m) refused an operation.
    #[error("WebRTC error: {0}")]
    Rtc(#[from] str0m::RtcError),
}
