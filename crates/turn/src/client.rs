//! TURN client (RFC 8656): Allocate with authentication retry, Refresh, CreatePermission, ChannelBind,
//! Send/Data and ChannelData. Work in progress.
