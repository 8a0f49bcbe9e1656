//! TLS between clients and the pooler, against the shared PostgreSQL (`ssl=on`, certificates from
//! `TestCerts`) with real clients: psql (libpq with OpenSSL) for every client_tls_sslmode and for
//! libpq verifying the pooler's certificate, tokio-postgres for plain connections, and
//! tokio-rustls by hand where the exact handshake matters (PostgreSQL 17's direct TLS and ALPN,
//! protocol versions, cipher suites); and the TLS settings that cannot work, refused when the
//! configuration is loaded.
//!
//! Channel binding, TLS towards PostgreSQL and certificate rotation are tested in
//! tests/tls_server.rs; auth_type = cert in tests/auth.rs.
#![allow(clippy::unwrap_used, clippy::err_expect)] // tokio-postgres clients are not Debug

mod common;

use common::tls::*;
use common::*;
use rustls::{CipherSuite, ProtocolVersion, SupportedProtocolVersion};
use std::io;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

const ALPN_POSTGRESQL: &[u8] = b"postgresql";

static ONLY_12: &[&SupportedProtocolVersion] = &[&rustls::version::TLS12];
static ONLY_13: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];

/// PostgreSQL 17's direct TLS: a ClientHello as the very first bytes.
async fn tls_direct(
    addr: SocketAddr,
    connector: &TlsConnector,
) -> io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    handshake(connector, tcp).await
}

// ---------------------------------------------------------------------------------------------
// 1. client_tls_sslmode

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_sslmode_disable_answers_n_even_with_certificate_files() {
    let s = Sluice::start(&serve_server_cert("disable"), "").await;
    let base = s.conn_str(SCRAM_USER, SCRAM_PASSWORD, "appdb");

    let p = psql_probe(format!("{base} sslmode=require")).await;
    assert!(!p.ok, "sslmode=require must fail without TLS:\n{}", p.text);
    assert!(
        p.text.contains("server does not support SSL"),
        "libpq should report the refusal:\n{}",
        p.text
    );
    let p = psql_probe(format!("{base} sslmode=prefer")).await;
    assert!(p.ok, "sslmode=prefer falls back to plain:\n{}", p.text);
    assert!(
        !p.tls,
        "no TLS with client_tls_sslmode=disable:\n{}",
        p.text
    );

    let mut raw = TcpStream::connect(s.addr).await.unwrap();
    raw.write_all(&SSL_REQUEST).await.unwrap();
    assert_eq!(raw.read_u8().await.unwrap(), b'N');
    // A ClientHello is not taken for direct TLS when TLS is off: refused, not hung.
    let direct = tls_direct(s.addr, &connector(ClientSetup::default())).await;
    assert!(
        direct.is_err(),
        "direct TLS to a pooler without TLS succeeded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_sslmodes_allow_and_prefer_accept_plain_and_tls() {
    for mode in ["allow", "prefer"] {
        let s = Sluice::start(&serve_server_cert(mode), "").await;
        let base = s.conn_str(SCRAM_USER, SCRAM_PASSWORD, "appdb");
        let p = psql_probe(format!("{base} sslmode=disable")).await;
        assert!(p.ok && !p.tls, "{mode}: plain login:\n{}", p.text);
        let p = psql_probe(format!("{base} sslmode=require")).await;
        assert!(p.ok && p.tls, "{mode}: TLS login:\n{}", p.text);
        let p = psql_probe(format!("{base} sslmode=prefer")).await;
        assert!(p.ok && p.tls, "{mode}: prefer chooses TLS:\n{}", p.text);
        let c = s.connect("appdb").await;
        assert_eq!(
            first_value(&c.simple_query("SELECT 7").await.unwrap()).as_deref(),
            Some("7"),
            "{mode}: tokio-postgres without TLS"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_sslmode_require_refuses_plaintext_with_28000() {
    let s = Sluice::start(&serve_server_cert("require"), "").await;
    let err = s
        .connect_as(SCRAM_USER, SCRAM_PASSWORD, "appdb")
        .await
        .err()
        .expect("a plaintext client is refused");
    assert_eq!(sqlstate(&err), Some("28000"), "{err:?}");
    assert!(error_text(&err).contains("SSL required"), "{err:?}");

    let base = s.conn_str(SCRAM_USER, SCRAM_PASSWORD, "appdb");
    let p = psql_probe(format!("{base} sslmode=disable")).await;
    assert!(!p.ok, "plain psql must be refused:\n{}", p.text);
    assert!(p.text.contains("SSL required"), "{}", p.text);
    // libpq's allow tries plain first and retries with TLS after the refusal.
    let p = psql_probe(format!("{base} sslmode=allow")).await;
    assert!(p.ok && p.tls, "sslmode=allow retries with TLS:\n{}", p.text);
    let p = psql_probe(format!("{base} sslmode=require")).await;
    assert!(p.ok && p.tls, "{}", p.text);
    let p = psql(format!("{base} sslmode=require"), "SELECT current_user").await;
    assert!(p.ok, "{}", p.text);
    assert_eq!(p.stdout, SCRAM_USER);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_verify_modes_demand_a_certificate_from_the_client_ca() {
    let c = &pg().certs;
    for mode in ["verify-ca", "verify-full"] {
        let s = Sluice::start(
            &format!(
                "{}\nclient_tls_ca_file = {}",
                serve_server_cert(mode),
                c.ca.display()
            ),
            "",
        )
        .await;
        let base = format!(
            "{} sslmode=require",
            s.conn_str(SCRAM_USER, SCRAM_PASSWORD, "appdb")
        );
        let p = psql_probe(base.clone()).await;
        assert!(
            !p.ok,
            "{mode}: no client certificate must fail:\n{}",
            p.text
        );
        let p = psql_probe(format!(
            "{base} sslcert={} sslkey={}",
            c.untrusted_cert.display(),
            c.untrusted_key.display()
        ))
        .await;
        assert!(
            !p.ok,
            "{mode}: a certificate from another CA must fail:\n{}",
            p.text
        );
        let p = psql_probe(format!(
            "{base} sslcert={} sslkey={}",
            c.app_client_cert.display(),
            c.app_client_key.display()
        ))
        .await;
        assert!(
            p.ok && p.tls,
            "{mode}: the CA's client certificate is accepted:\n{}",
            p.text
        );
        let p = psql_probe(format!(
            "{} sslmode=disable",
            s.conn_str(SCRAM_USER, SCRAM_PASSWORD, "appdb")
        ))
        .await;
        assert!(!p.ok, "{mode}: plaintext refused:\n{}", p.text);
        assert!(p.text.contains("SSL required"), "{mode}:\n{}", p.text);
    }

    // Below verify-ca a configured CA makes the certificate optional (auth_type cert may use it).
    let s = Sluice::start(
        &format!(
            "{}\nclient_tls_ca_file = {}",
            serve_server_cert("require"),
            c.ca.display()
        ),
        "",
    )
    .await;
    let p = psql_probe(format!(
        "{} sslmode=require",
        s.conn_str(SCRAM_USER, SCRAM_PASSWORD, "appdb")
    ))
    .await;
    assert!(p.ok && p.tls, "require + CA, no certificate:\n{}", p.text);
}

// ---------------------------------------------------------------------------------------------
// 2. libpq verifying the pooler's certificate

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_verify_full_and_verify_ca_against_the_pooler_certificate() {
    let c = &pg().certs;
    let ca = c.ca.display();

    let s = Sluice::start(&serve_server_cert("require"), "").await;
    let port = s.addr.port();
    let login = format!("user={SCRAM_USER} password={SCRAM_PASSWORD} dbname=appdb port={port}");
    for host in ["127.0.0.1", "localhost"] {
        let p = psql_probe(format!(
            "host={host} {login} sslmode=verify-full sslrootcert={ca}"
        ))
        .await;
        assert!(p.ok && p.tls, "verify-full, host={host}:\n{}", p.text);
    }
    let p = psql_probe(format!(
        "host=127.0.0.1 {login} sslmode=verify-full sslrootcert={}",
        c.other_ca.display()
    ))
    .await;
    assert!(
        !p.ok,
        "a root that did not sign the certificate:\n{}",
        p.text
    );
    assert!(p.text.contains("certificate verify failed"), "{}", p.text);

    // A certificate for another name: the chain is good, the name is not.
    let s = Sluice::start(
        &serve_tls("require", &c.wrong_name_cert, &c.wrong_name_key),
        "",
    )
    .await;
    let login = format!(
        "host=127.0.0.1 port={} user={SCRAM_USER} password={SCRAM_PASSWORD} dbname=appdb sslrootcert={ca}",
        s.addr.port()
    );
    let p = psql_probe(format!("{login} sslmode=verify-full")).await;
    assert!(
        !p.ok,
        "verify-full must fail on a name mismatch:\n{}",
        p.text
    );
    assert!(p.text.contains("does not match host name"), "{}", p.text);
    let p = psql_probe(format!("{login} sslmode=verify-ca")).await;
    assert!(p.ok && p.tls, "verify-ca ignores the name:\n{}", p.text);

    // Signed by a CA the client does not trust: verify-ca fails, require does not look.
    let s = Sluice::start(
        &serve_tls("require", &c.untrusted_cert, &c.untrusted_key),
        "",
    )
    .await;
    let login = format!(
        "host=127.0.0.1 port={} user={SCRAM_USER} password={SCRAM_PASSWORD} dbname=appdb",
        s.addr.port()
    );
    let p = psql_probe(format!("{login} sslmode=verify-ca sslrootcert={ca}")).await;
    assert!(
        !p.ok,
        "verify-ca must fail on an unknown issuer:\n{}",
        p.text
    );
    assert!(p.text.contains("certificate verify failed"), "{}", p.text);
    let p = psql_probe(format!("{login} sslmode=require")).await;
    assert!(p.ok && p.tls, "{}", p.text);
}

// ---------------------------------------------------------------------------------------------
// 3. PostgreSQL 17 direct TLS

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_tls_with_alpn_postgresql_is_served_and_without_alpn_refused() {
    let c = &pg().certs;
    let s = Sluice::start(&serve_server_cert("require"), "").await;

    // The ClientHello first, naming "postgresql"; the certificate verifies against the test CA.
    let with_alpn = connector(ClientSetup {
        alpn: Some(ALPN_POSTGRESQL),
        ca: Some(c.ca.as_path()),
        ..ClientSetup::default()
    });
    let mut tls = tls_direct(s.addr, &with_alpn).await.expect("direct TLS");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(ALPN_POSTGRESQL));
    assert_eq!(served(&tls), der(&c.server_cert));
    // The startup packet inside TLS gets an authentication request (md5), and with
    // client_tls_sslmode = require the connection counts as TLS.
    assert_eq!(
        login(&mut tls, MD5_USER, Some(MD5_PASSWORD)).await,
        Ok(5),
        "an md5 request, then ReadyForQuery"
    );
    assert_eq!(
        query_value(&mut tls, "SELECT 17").await.as_deref(),
        Ok("17")
    );

    // No ALPN: PostgreSQL 17 refuses such a connection, and so must the pooler (an error or a
    // close; never an authentication request).
    let no_alpn = connector(ClientSetup::default());
    if let Ok(mut tls) = tls_direct(s.addr, &no_alpn).await {
        let _ = tls
            .write_all(&wire::startup(
                196608,
                &[("user", MD5_USER), ("database", "appdb")],
            ))
            .await;
        match read_msg(&mut tls).await {
            Ok((b'E', body)) => assert_eq!(
                error_field(&body, b'C').as_deref(),
                Some("08P01"),
                "{}",
                describe_error(&body)
            ),
            Ok((tag, _)) => panic!("direct TLS without ALPN answered {:?}", tag as char),
            Err(e) => assert_ne!(e.kind(), io::ErrorKind::TimedOut, "the pooler hung: {e}"),
        }
    }
    // Another protocol by ALPN: refused in the handshake (no_application_protocol).
    let http = connector(ClientSetup {
        alpn: Some(&b"http/1.1"[..]),
        ..ClientSetup::default()
    });
    assert!(
        tls_direct(s.addr, &http).await.is_err(),
        "ALPN http/1.1 must be refused"
    );
    // The SSLRequest way is still served, ALPN or not.
    let mut tls = tls_after_ssl_request(s.addr, &no_alpn).await.unwrap();
    assert_eq!(login(&mut tls, MD5_USER, Some(MD5_PASSWORD)).await, Ok(5));
    let mut tls = tls_after_ssl_request(s.addr, &with_alpn).await.unwrap();
    assert_eq!(login(&mut tls, MD5_USER, Some(MD5_PASSWORD)).await, Ok(5));
}

// ---------------------------------------------------------------------------------------------
// 4. client_tls_protocols, client_tls_ciphers, client_tls13_ciphers

fn suite_of(t: &TlsStream<TcpStream>) -> CipherSuite {
    t.get_ref()
        .1
        .negotiated_cipher_suite()
        .expect("a negotiated suite")
        .suite()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_tls_protocols_limit_the_versions() {
    // TLS 1.3 only.
    let s = Sluice::start(
        &format!(
            "{}\nclient_tls_protocols = tlsv1.3",
            serve_server_cert("require")
        ),
        "",
    )
    .await;
    let only12 = connector(ClientSetup {
        versions: ONLY_12,
        ..ClientSetup::default()
    });
    assert!(
        tls_after_ssl_request(s.addr, &only12).await.is_err(),
        "a TLS 1.2 client must be refused by tlsv1.3"
    );
    let only13 = connector(ClientSetup {
        versions: ONLY_13,
        ..ClientSetup::default()
    });
    let mut t = tls_after_ssl_request(s.addr, &only13).await.unwrap();
    assert_eq!(
        t.get_ref().1.protocol_version(),
        Some(ProtocolVersion::TLSv1_3)
    );
    assert_eq!(login(&mut t, MD5_USER, Some(MD5_PASSWORD)).await, Ok(5));
    assert_eq!(query_value(&mut t, "SELECT 13").await.as_deref(), Ok("13"));
    let base = s.conn_str(SCRAM_USER, SCRAM_PASSWORD, "appdb");
    let p = psql_probe(format!(
        "{base} sslmode=require ssl_max_protocol_version=TLSv1.2"
    ))
    .await;
    assert!(!p.ok, "libpq capped at TLS 1.2:\n{}", p.text);
    let p = psql_probe(format!("{base} sslmode=require")).await;
    assert!(p.ok && p.text.contains("protocol: TLSv1.3"), "{}", p.text);

    // TLS 1.2 only, one named suite.
    let s = Sluice::start(
        &format!(
            "{}\nclient_tls_protocols = tlsv1.2\nclient_tls_ciphers = ECDHE-ECDSA-CHACHA20-POLY1305",
            serve_server_cert("require")
        ),
        "",
    )
    .await;
    assert!(
        tls_after_ssl_request(s.addr, &only13).await.is_err(),
        "a TLS 1.3 client must be refused by tlsv1.2"
    );
    let mut t = tls_after_ssl_request(s.addr, &connector(ClientSetup::default()))
        .await
        .unwrap();
    assert_eq!(
        t.get_ref().1.protocol_version(),
        Some(ProtocolVersion::TLSv1_2)
    );
    assert_eq!(
        suite_of(&t),
        CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
    );
    assert_eq!(login(&mut t, MD5_USER, Some(MD5_PASSWORD)).await, Ok(5));
    let aes_only = connector(ClientSetup {
        versions: ONLY_12,
        suites: Some(vec![
            rustls::crypto::ring::cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        ]),
        ..ClientSetup::default()
    });
    assert!(
        tls_after_ssl_request(s.addr, &aes_only).await.is_err(),
        "a suite left out by client_tls_ciphers must not be negotiated"
    );
    let base = s.conn_str(SCRAM_USER, SCRAM_PASSWORD, "appdb");
    let p = psql_probe(format!("{base} sslmode=require")).await;
    assert!(
        p.ok && p.text.contains("protocol: TLSv1.2")
            && p.text.contains("ECDHE-ECDSA-CHACHA20-POLY1305"),
        "{}",
        p.text
    );

    // One TLS 1.3 suite.
    let s = Sluice::start(
        &format!(
            "{}\nclient_tls13_ciphers = TLS_CHACHA20_POLY1305_SHA256",
            serve_server_cert("require")
        ),
        "",
    )
    .await;
    let t = tls_after_ssl_request(s.addr, &only13).await.unwrap();
    assert_eq!(suite_of(&t), CipherSuite::TLS13_CHACHA20_POLY1305_SHA256);
    let aes13 = connector(ClientSetup {
        versions: ONLY_13,
        suites: Some(vec![
            rustls::crypto::ring::cipher_suite::TLS13_AES_256_GCM_SHA384,
        ]),
        ..ClientSetup::default()
    });
    assert!(
        tls_after_ssl_request(s.addr, &aes13).await.is_err(),
        "a TLS 1.3 suite left out by client_tls13_ciphers must not be negotiated"
    );
    let base = s.conn_str(SCRAM_USER, SCRAM_PASSWORD, "appdb");
    let p = psql_probe(format!("{base} sslmode=require")).await;
    assert!(
        p.ok && p.text.contains("TLS_CHACHA20_POLY1305_SHA256"),
        "{}",
        p.text
    );
}

// ---------------------------------------------------------------------------------------------
// Settings that cannot work are refused when the configuration is loaded

#[test]
fn tls_settings_that_cannot_work_are_configuration_errors() {
    let dir = tempfile::tempdir().unwrap();
    let certs = common::certs::TestCerts::generate(&dir.path().join("certs"));
    std::fs::write(dir.path().join("userlist.txt"), "\"app\" \"x\"\n").unwrap();
    let load = |extra: &str| {
        let path = dir.path().join("pgbouncer.ini");
        std::fs::write(
            &path,
            format!(
                "[databases]\n* = host=127.0.0.1\n\n[pgbouncer]\nlisten_addr = 127.0.0.1\n\
                 listen_port = 0\nunix_socket_dir =\nauth_type = md5\nauth_file = userlist.txt\n\
                 stats_period = 0\n{extra}\n"
            ),
        )
        .unwrap();
        pgsluice::config::load(&path).map(|_| ())
    };
    let serve = serve_tls("require", &certs.server_cert, &certs.server_key);
    let ca = format!("client_tls_ca_file = {}", certs.ca.display());
    load(&serve).expect("a working client TLS configuration");
    load(&format!(
        "{}\n{ca}",
        serve_tls("verify-full", &certs.server_cert, &certs.server_key)
    ))
    .expect("verify-full with a CA");
    load(&format!(
        "server_tls_sslmode = verify-full\nserver_tls_ca_file = {}",
        certs.ca.display()
    ))
    .expect("server verify-full with a CA");

    for (extra, want) in [
        (
            serve_tls("verify-ca", &certs.server_cert, &certs.server_key),
            "needs client_tls_ca_file",
        ),
        (
            "client_tls_sslmode = require".to_owned(),
            "needs client_tls_cert_file and client_tls_key_file",
        ),
        (
            "server_tls_sslmode = verify-full".to_owned(),
            "needs server_tls_ca_file",
        ),
        (
            format!("{serve}\nclient_tls_protocols = tlsv1.1"),
            "leaves no protocol",
        ),
        (
            format!(
                "server_tls_sslmode = require\nserver_tls_cert_file = {}",
                certs.pooler_client_cert.display()
            ),
            "go together",
        ),
        (
            serve_tls(
                "require",
                &certs.server_cert,
                &dir.path().join("missing.key"),
            ),
            "missing.key",
        ),
    ] {
        match load(&extra) {
            Ok(()) => panic!("accepted:\n{extra}"),
            Err(e) => assert!(e.to_string().contains(want), "{extra}\n=> {e}"),
        }
    }
}
