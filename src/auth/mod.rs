//! Authentication: the pooler's side of trust, cleartext, md5, SCRAM-SHA-256, cert, peer and hba
//! towards clients, the SCRAM client towards servers, and the secrets learnt at run time.
//!
//! The exchanges themselves are sans-IO ([`scram`], [`md5`]); frontend/authenticate.rs drives them
//! over the wire.

pub mod hba;
pub mod kdf;
pub mod md5;
pub mod scram;
pub mod scram_client;
pub mod secret;
pub mod store;
pub mod verifiers;
