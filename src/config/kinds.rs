//! The values of the settings that take one of a few words: pool mode, auth type, sslmode, log
//! format, each parsed the way PgBouncer spells it.

use serde::{Deserialize, Serialize};

/// How long a server stays with a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolMode {
    /// Until the client disconnects.
    Session,
    /// Until the transaction ends (ReadyForQuery `I`).
    Transaction,
    /// Until the statement ends; multi-statement transactions are refused.
    Statement,
}

impl std::str::FromStr for PoolMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "session" => Ok(Self::Session),
            "transaction" => Ok(Self::Transaction),
            "statement" => Ok(Self::Statement),
            _ => Err(format!(
                "expected session, transaction or statement, got {s:?}"
            )),
        }
    }
}

impl std::fmt::Display for PoolMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Session => "session",
            Self::Transaction => "transaction",
            Self::Statement => "statement",
        })
    }
}

/// How clients prove who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuthType {
    /// No check; the user name must still be known unless `any`.
    Trust,
    /// No check and the user name is ignored (the database entry forces one).
    Any,
    /// Cleartext password.
    #[serde(alias = "password")]
    Plain,
    /// MD5 challenge; a SCRAM secret upgrades the client to SCRAM, as PgBouncer does.
    Md5,
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    /// A TLS client certificate whose CN is the user name.
    Cert,
    /// Per connection, as the first matching line of `auth_hba_file` says.
    Hba,
}

impl std::str::FromStr for AuthType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "trust" => Ok(Self::Trust),
            "any" => Ok(Self::Any),
            "plain" | "password" => Ok(Self::Plain),
            "md5" => Ok(Self::Md5),
            "scram-sha-256" => Ok(Self::ScramSha256),
            "cert" => Ok(Self::Cert),
            "hba" => Ok(Self::Hba),
            other => Err(format!(
                "unsupported auth_type {other:?} (trust, any, password, md5, scram-sha-256, cert, hba)"
            )),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// TLS is a network notion; config reads the word.
pub use crate::net::tls::SslMode;
