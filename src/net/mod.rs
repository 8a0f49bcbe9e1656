//! Sockets: the listeners and the stream type that hides TCP versus unix sockets.

pub mod listener;
pub mod stream;
