//! Redis over raw RESP2 on the reactor's own sockets: commands out and replies in through
//! `redis-protocol`, and `RedisLink`, the state machine of one connection.

pub mod cluster;
pub mod cmd;
pub mod link;
pub mod shards;
