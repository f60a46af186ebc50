//! Signaling server: rooms, sessions, tokens and the WebSocket endpoint.
