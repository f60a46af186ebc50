//! Sans-IO STUN/TURN message codec (RFC 8489, RFC 8656). No I/O, no async.
