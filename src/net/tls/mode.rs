//! libpq's sslmode, for `client_tls_sslmode` and `server_tls_sslmode`.

use serde::{Deserialize, Serialize};

/// libpq's sslmode values, used for `client_tls_sslmode` and `server_tls_sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    /// The peer must use TLS.
    pub fn requires_tls(self) -> bool {
        self >= SslMode::Require
    }
    /// The peer's certificate must chain to the configured CA.
    pub fn verifies(self) -> bool {
        self >= SslMode::VerifyCa
    }

    /// libpq's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

impl std::str::FromStr for SslMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "disable" => Ok(Self::Disable),
            "allow" => Ok(Self::Allow),
            "prefer" => Ok(Self::Prefer),
            "require" => Ok(Self::Require),
            "verify-ca" => Ok(Self::VerifyCa),
            "verify-full" => Ok(Self::VerifyFull),
            other => Err(format!(
                "unsupported sslmode {other:?} (disable, allow, prefer, require, verify-ca, verify-full)"
            )),
        }
    }
}
