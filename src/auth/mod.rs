//! Client authentication: the pooler's side of trust, cleartext, md5 and SCRAM-SHA-256.
//!
//! The exchanges themselves are sans-IO ([`scram`], [`md5`]); [`client`] drives them over the wire.

pub mod client;
pub mod md5;
pub mod scram;
pub mod secret;
