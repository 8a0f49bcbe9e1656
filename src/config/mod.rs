//! Configuration: one validated, immutable model with two front doors.
//!
//! - native TOML read with figment: built-in defaults, then the file, then `PGSLUICE_*` variables
//!   ([`toml`]);
//! - PgBouncer's `pgbouncer.ini` read as is, with `%include` and the `auth_file` ([`pgbouncer`]).
//!
//! Both fill the same [`RawConfig`] under PgBouncer's key names; [`Config::from_raw`] validates it.

pub mod connstr;
pub mod ini;
mod kinds;
mod locate;
mod model;
mod peering;
pub mod pgbouncer;
mod raw;
pub mod toml;
pub mod userlist;

pub use kinds::*;
pub use locate::{KubeService, Locate};
pub use model::*;
pub use peering::{id_of_address, BudgetScope, PeerAddr, Peering, MAX_PEER_ID};
pub use raw::*;

use std::path::{Path, PathBuf};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ConfigError {
    /// The OS error is told in the message, not as a source as well: a caller that prints the
    /// chain (`{:#}`) would tell it twice.
    #[error("{file}: {error}")]
    Io {
        file: PathBuf,
        error: std::io::Error,
    },
    #[error(transparent)]
    Ini(#[from] ini::IniError),
    #[error("{file}:{line}: invalid value for \"{key}\": {message}")]
    Value {
        file: PathBuf,
        line: usize,
        key: String,
        message: String,
    },
    #[error("{file}: {message}")]
    Toml { file: PathBuf, message: String },
    #[error("{file}:{line}: {message}")]
    AuthFile {
        file: PathBuf,
        line: usize,
        message: String,
    },
    #[error(transparent)]
    Tls(#[from] crate::net::tls::TlsError),
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Which reader a configuration file needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Toml,
    PgBouncerIni,
}

/// Tells TOML from pgbouncer.ini by extension, then by content: an ini file has a `[pgbouncer]` or
/// `[databases]` section with `key = value` lines that are not TOML (unquoted strings).
pub fn detect_format(path: &Path, text: &str) -> Format {
    match path.extension().and_then(|e| e.to_str()) {
        Some("toml") => return Format::Toml,
        Some("ini") => return Format::PgBouncerIni,
        _ => {}
    }
    let has_pgbouncer_section = text
        .lines()
        .any(|l| l.trim().eq_ignore_ascii_case("[pgbouncer]"));
    if has_pgbouncer_section || text.lines().any(|l| l.trim_start().starts_with('%')) {
        Format::PgBouncerIni
    } else {
        Format::Toml
    }
}

/// Loads and validates a configuration file of either format.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    load_with(path, &[])
}

/// Loads a configuration file with the admin console's `SET key = value` pairs applied over it,
/// as PgBouncer's ini values (`SET` names a `[pgbouncer]` or `[pgsluice]` key).
pub fn load_with(path: &Path, overrides: &[(String, String)]) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Io {
        file: path.to_owned(),
        error,
    })?;
    let mut loaded = match detect_format(path, &text) {
        Format::Toml => toml::load(path)?,
        Format::PgBouncerIni => pgbouncer::load(path)?,
    };
    pgbouncer::apply_overrides(&mut loaded.raw.general, overrides)?;
    Config::from_raw(loaded.raw, path, loaded.warnings)
}
