//! Sockets: the listeners, the stream type that hides TCP, TLS and unix sockets, and TLS itself.

pub mod connect;
pub mod listener;
pub mod oneshot;
pub mod stream;
pub mod tls;
