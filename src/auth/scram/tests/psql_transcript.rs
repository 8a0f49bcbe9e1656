//! Replays a real SCRAM-SHA-256 exchange between Debian's psql and a real
//! PostgreSQL through our server, which must answer byte for byte as
//! PostgreSQL did.
//!
//! Recorded 2026-12-02 with psql 15.18 (Debian 15.18-0+deb12u1) against
//! PostgreSQL 15.18 (Debian 15.18-0+deb12u1) over a logging TCP relay,
//! `sslmode=disable`, `host all all 127.0.0.1/32 scram-sha-256`, after
//! `CREATE ROLE transcript LOGIN PASSWORD 'transcript-pw'` with
//! `password_encryption = scram-sha-256`. The password is a throwaway test
//! value. The consts are the SASL payloads without the protocol framing.

use crate::auth::scram::{ScramError, ScramServer};
use crate::auth::secret::{sha256, ScramVerifier};

/// `SELECT rolpassword FROM pg_authid WHERE rolname = 'transcript'`.
const ROLPASSWORD: &str = "SCRAM-SHA-256$4096:2BlPuPP4424lD3ACRMjv2g==$\
    HKeIBQZJr3HgX/+5J/rHx4h+QbFwf+Z+kHh3vDp2IBU=:\
    z6djupPEzsMlnGLHQhlNSAvEDYxwefcmZu7EPekxvKo=";
/// SASLInitialResponse data (mechanism `SCRAM-SHA-256`).
const CLIENT_FIRST: &[u8] = b"n,,n=,r=Ou7IxfnSNwVfUdT5NoABUgPt";
/// AuthenticationSASLContinue data.
const SERVER_FIRST: &[u8] =
    b"r=Ou7IxfnSNwVfUdT5NoABUgPtBNCguf5d2WRgALEDZ2zbsVTh,s=2BlPuPP4424lD3ACRMjv2g==,i=4096";
/// SASLResponse data.
const CLIENT_FINAL: &[u8] = b"c=biws,r=Ou7IxfnSNwVfUdT5NoABUgPtBNCguf5d2WRgALEDZ2zbsVTh,\
    p=Rwsg6lVCHM/NI2BkUMovA0rsyL3F/rmioInrXiqI/Io=";
/// AuthenticationSASLFinal data.
const SERVER_FINAL: &[u8] = b"v=J0euulNJ6mdJ+XbrEczstvmb6ZoLanxgKDZLZdg2WOE=";

const CLIENT_NONCE: &str = "Ou7IxfnSNwVfUdT5NoABUgPt";

fn verifier() -> ScramVerifier {
    ScramVerifier::parse(ROLPASSWORD).expect("recorded rolpassword parses")
}

/// The server part of server-first's nonce: what PostgreSQL generated.
fn server_nonce() -> &'static str {
    let nonce = std::str::from_utf8(SERVER_FIRST)
        .ok()
        .and_then(|s| s.strip_prefix("r="))
        .and_then(|s| s.split(',').next())
        .expect("server-first starts with r=");
    nonce
        .strip_prefix(CLIENT_NONCE)
        .expect("server nonce extends the client nonce")
}

#[test]
#[allow(clippy::unwrap_used)]
fn psql_transcript_replays_byte_for_byte() {
    assert_eq!(server_nonce(), "BNCguf5d2WRgALEDZ2zbsVTh");
    let server = ScramServer::new_with_nonce_str(verifier(), server_nonce());
    let (server, first) = server.client_first(CLIENT_FIRST).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&first),
        String::from_utf8_lossy(SERVER_FIRST)
    );
    let ok = server.client_final(CLIENT_FINAL).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&ok.server_final),
        String::from_utf8_lossy(SERVER_FINAL)
    );
    assert_eq!(sha256(&ok.client_key), verifier().stored_key);
}

#[test]
#[allow(clippy::unwrap_used)]
fn psql_transcript_tampered_or_replayed_fails() {
    // One proof character changed: 'R' -> 'S' alters the first byte, the
    // proof stays 44 characters of valid base64.
    let tampered = std::str::from_utf8(CLIENT_FINAL)
        .unwrap()
        .replace(",p=Rwsg", ",p=Swsg");
    assert_ne!(tampered.as_bytes(), CLIENT_FINAL);
    let server = ScramServer::new_with_nonce_str(verifier(), server_nonce());
    let (server, first) = server.client_first(CLIENT_FIRST).unwrap();
    assert_eq!(first, SERVER_FIRST);
    assert_eq!(
        server.client_final(tampered.as_bytes()).unwrap_err(),
        ScramError::InvalidProof
    );

    // Replaying the recorded client-final against a fresh server nonce.
    let server = ScramServer::new_with_nonce_str(verifier(), "AnotherServerNonce123456");
    let (server, first) = server.client_first(CLIENT_FIRST).unwrap();
    assert_ne!(first, SERVER_FIRST);
    assert_eq!(
        server.client_final(CLIENT_FINAL).unwrap_err(),
        ScramError::Malformed("nonce mismatch")
    );
}
