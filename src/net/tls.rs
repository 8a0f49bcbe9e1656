//! TLS for both sides, built with rustls from the configured PEM files. A configuration load (and
//! every reload) builds these afresh, so a certificate replaced on disk, by rename as Kubernetes
//! does, is served to the next client while connected ones keep their sessions.

mod mode;
mod suites;
mod verify;

pub use verify::{end_point_hash, AnyCertificate};

pub use mode::SslMode;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use thiserror::Error;

/// The ALPN protocol name PostgreSQL 17 uses, required for direct TLS.
pub const ALPN_POSTGRESQL: &[u8] = b"postgresql";

#[derive(Debug, Error)]
pub enum TlsError {
    #[error("{}: {message}", file.display())]
    File { file: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
}

/// The TLS settings of one side, as configured (paths already resolved).
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub ca: Option<PathBuf>,
    pub protocols: String,
    pub ciphers: String,
    pub tls13_ciphers: String,
}

/// TLS towards clients.
#[derive(Clone)]
pub struct ClientTls {
    pub mode: SslMode,
    pub acceptor: Option<tokio_rustls::TlsAcceptor>,
    /// `tls-server-end-point` channel binding data (RFC 5929): the hash of the certificate we
    /// present. `None` when TLS is off or the certificate's hash cannot be told.
    pub end_point: Option<Vec<u8>>,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("mode", &self.mode)
            .field("enabled", &self.acceptor.is_some())
            .finish()
    }
}

/// TLS towards PostgreSQL.
#[derive(Clone)]
pub struct ServerTls {
    pub mode: SslMode,
    pub connector: Option<tokio_rustls::TlsConnector>,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("mode", &self.mode)
            .field("enabled", &self.connector.is_some())
            .finish()
    }
}

impl ServerTls {
    /// No TLS at all, for code paths (tests, cancel forwarding) that have no configuration.
    pub fn disabled() -> ServerTls {
        ServerTls {
            mode: SslMode::Disable,
            connector: None,
        }
    }
}

fn provider(files: &TlsFiles, side: &str, warnings: &mut Vec<String>) -> Arc<CryptoProvider> {
    let mut p = rustls::crypto::ring::default_provider();
    p.cipher_suites = suites::select(
        &p.cipher_suites,
        &files.ciphers,
        &files.tls13_ciphers,
        side,
        warnings,
    );
    Arc::new(p)
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bad = |message: String| TlsError::File {
        file: path.to_owned(),
        message,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no certificate in the file".into()));
    }
    Ok(certs)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::File {
        file: path.to_owned(),
        message: format!("no usable private key: {e}"),
    })
}

fn roots(path: &Path) -> Result<Arc<rustls::RootCertStore>, TlsError> {
    let mut store = rustls::RootCertStore::empty();
    for c in certs(path)? {
        store.add(c).map_err(|e| TlsError::File {
            file: path.to_owned(),
            message: format!("not a usable CA certificate: {e}"),
        })?;
    }
    Ok(Arc::new(store))
}

fn invalid(side: &str, e: impl fmt::Display) -> TlsError {
    TlsError::Invalid(format!("{side} TLS: {e}"))
}

impl ClientTls {
    pub fn load(
        mode: SslMode,
        files: &TlsFiles,
        warnings: &mut Vec<String>,
    ) -> Result<ClientTls, TlsError> {
        const SIDE: &str = "client";
        if mode == SslMode::Disable {
            return Ok(ClientTls {
                mode,
                acceptor: None,
                end_point: None,
            });
        }
        let (Some(cert_file), Some(key_file)) = (&files.cert, &files.key) else {
            return Err(TlsError::Invalid(format!(
                "client_tls_sslmode = {} needs client_tls_cert_file and client_tls_key_file",
                mode.as_str()
            )));
        };
        let chain = certs(cert_file)?;
        let key = key(key_file)?;
        let provider = provider(files, SIDE, warnings);
        let versions = suites::versions(&files.protocols, SIDE, warnings)?;
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&versions)
            .map_err(|e| invalid(SIDE, e))?;
        let builder = match &files.ca {
            Some(ca) => {
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    roots(ca)?,
                    provider,
                );
                // Without verify-*, a certificate is still asked for (auth_type cert) but optional.
                let verifier = if mode.verifies() {
                    verifier
                } else {
                    verifier.allow_unauthenticated()
                };
                builder.with_client_cert_verifier(verifier.build().map_err(|e| invalid(SIDE, e))?)
            }
            None if mode.verifies() => {
                return Err(TlsError::Invalid(format!(
                    "client_tls_sslmode = {} needs client_tls_ca_file",
                    mode.as_str()
                )))
            }
            None => builder.with_no_client_auth(),
        };
        let end_point = verify::end_point_hash(&chain[0]);
        let mut config = builder
            .with_single_cert(chain, key)
            .map_err(|e| invalid(SIDE, e))?;
        config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
        Ok(ClientTls {
            mode,
            acceptor: Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))),
            end_point,
        })
    }
}

impl ServerTls {
    pub fn load(
        mode: SslMode,
        files: &TlsFiles,
        warnings: &mut Vec<String>,
    ) -> Result<ServerTls, TlsError> {
        const SIDE: &str = "server";
        if mode == SslMode::Disable {
            return Ok(ServerTls::disabled());
        }
        let provider = provider(files, SIDE, warnings);
        let versions = suites::versions(&files.protocols, SIDE, warnings)?;
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&versions)
            .map_err(|e| invalid(SIDE, e))?;
        let verifier: Arc<dyn rustls::client::danger::ServerCertVerifier> = if mode.verifies() {
            let Some(ca) = &files.ca else {
                return Err(TlsError::Invalid(format!(
                    "server_tls_sslmode = {} needs server_tls_ca_file",
                    mode.as_str()
                )));
            };
            let webpki =
                rustls::client::WebPkiServerVerifier::builder_with_provider(roots(ca)?, provider)
                    .build()
                    .map_err(|e| invalid(SIDE, e))?;
            if mode == SslMode::VerifyFull {
                webpki
            } else {
                Arc::new(verify::ChainOnly(webpki))
            }
        } else {
            Arc::new(verify::AnyCertificate(provider))
        };
        let builder = builder
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let config = match (&files.cert, &files.key) {
            (Some(cert), Some(key_file)) => builder
                .with_client_auth_cert(certs(cert)?, key(key_file)?)
                .map_err(|e| invalid(SIDE, e))?,
            (None, None) => builder.with_no_client_auth(),
            _ => {
                return Err(TlsError::Invalid(
                    "server_tls_cert_file and server_tls_key_file go together".into(),
                ))
            }
        };
        Ok(ServerTls {
            mode,
            connector: Some(tokio_rustls::TlsConnector::from(Arc::new(config))),
        })
    }
}
