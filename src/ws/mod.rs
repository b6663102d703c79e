//! WebSocket (RFC 6455): the opening handshake and frames in and out, using tungstenite's
//! frame codec (`FrameHeader`) without its stream machinery, which would give every socket a
//! read buffer of its own.

pub mod deflate;
pub mod frame;
pub mod handshake;
