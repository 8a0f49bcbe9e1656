//! Native TOML configuration through figment: built-in defaults, then the file, then `PGSLUICE_*`
//! environment variables. `PGSLUICE_LISTEN_PORT=7000` sets `general.listen_port`; a double underscore
//! reaches other tables (`PGSLUICE_DATABASES__APP__HOST=db1`).

use super::{ConfigError, Loaded, RawConfig, RawGeneral};
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use std::path::Path;

pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
    // Only variables that name a setting: others that share the prefix (a script's PGSLUICE_DSN, say)
    // are not pgsluice's business and must not stop it.
    let known: Vec<String> = Figment::from(Serialized::defaults(RawGeneral::default()))
        .extract::<figment::value::Dict>()
        .map(|d| d.into_keys().collect())
        .unwrap_or_default();
    let figment = Figment::from(Serialized::defaults(RawConfig::default()))
        .merge(Toml::file_exact(path))
        .merge(
            Env::prefixed("PGSLUICE_")
                .filter(move |k| {
                    let k = k.as_str().to_ascii_lowercase();
                    k.contains("__") || known.contains(&k)
                })
                .map(|k| {
                    let k = k.as_str().to_ascii_lowercase();
                    if k.contains("__") {
                        k.replace("__", ".").into()
                    } else {
                        format!("general.{k}").into()
                    }
                })
                .split("."),
        );
    let raw: RawConfig = figment.extract().map_err(|e| ConfigError::Toml {
        file: path.to_owned(),
        message: e.to_string(),
    })?;
    Ok(Loaded {
        raw,
        warnings: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    /// The example configurations shipped in `config/` load, with every key they document.
    #[test]
    fn the_shipped_examples_load() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        for file in ["pgsluice.toml", "pgbouncer.ini"] {
            let c = crate::config::load(&dir.join(file))
                .unwrap_or_else(|e| panic!("config/{file} does not load: {e}"));
            assert_eq!(c.general.client_statements.statements, 1000, "{file}");
        }
    }
}
