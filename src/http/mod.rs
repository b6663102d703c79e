//! HTTP/1.1: parse requests (httparse), route them, build replies. Nothing here touches a
//! socket: the reactor feeds bytes in and queues the bytes that come out.

pub mod access;
pub mod form;
pub mod parse;
pub mod publish;
pub mod reply;
pub mod route;
