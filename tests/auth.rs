//! Client authentication against the real PostgreSQL, auth_type by auth_type: trust, any,
//! password, md5 and scram-sha-256 over plain connections, cert over TLS, channel binding required
//! by the client, hba files, and peer on the unix socket. auth_query is tested in
//! tests/auth_query.rs; stalled and malformed logins and the log in tests/auth_wire.rs.
#![allow(clippy::unwrap_used, clippy::zombie_processes)]

mod common;

use common::auth::*;
use common::*;
use std::process::Output;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// libpq's options to present the client certificate whose CN is `app`.
fn app_certificate() -> String {
    let c = &Postgres::shared().certs;
    format!(
        "sslcert={} sslkey={}",
        c.app_client_cert.display(),
        c.app_client_key.display()
    )
}

/// psql's error output; panics when it succeeded.
fn failure(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "psql was let in: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Connects with tokio-postgres giving no password at all.
async fn connect_without_password(
    s: &Sluice,
    user: &str,
    db: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, conn) =
        tokio_postgres::connect(&conninfo(s, user, db, ""), tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

// ---------------------------------------------------------------------------------------------
// 1. auth_type over plain connections
// ---------------------------------------------------------------------------------------------

/// Each auth_type asks the client for what its name says (nothing, a cleartext password, an md5
/// response, SCRAM), and the right password gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_auth_type_asks_for_what_it_names() {
    for (auth_type, asked) in [
        ("trust", AUTH_OK),
        ("any", AUTH_OK),
        ("plain", AUTH_CLEARTEXT),
        ("password", AUTH_CLEARTEXT),
        ("md5", AUTH_MD5),
        ("scram-sha-256", AUTH_SASL),
    ] {
        let s = Sluice::start(&format!("auth_type = {auth_type}"), "").await;
        assert_eq!(
            first_auth_request(&s, SCRAM_USER, "appdb").await,
            asked,
            "what auth_type = {auth_type} asks for"
        );
        let c = s
            .connect_as(SCRAM_USER, SCRAM_PASSWORD, "appdb")
            .await
            .unwrap_or_else(|e| panic!("auth_type = {auth_type}: {e}"));
        assert_eq!(
            current_user(&c).await,
            SCRAM_USER,
            "auth_type = {auth_type}"
        );
    }
}

/// trust and any let a client in without a password; any also takes a user nobody knows when
/// the database entry forces the server user (PgBouncer's meaning).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_and_any_need_no_password() {
    let pg = Postgres::shared();
    let s = Sluice::start("auth_type = trust", "").await;
    let c = connect_without_password(&s, SCRAM_USER, "appdb")
        .await
        .expect("trust asks for no password");
    assert_eq!(current_user(&c).await, SCRAM_USER);

    let s = Sluice::start(
        "auth_type = any",
        &format!(
            "forced = host=127.0.0.1 port={} dbname=appdb user={SCRAM_USER}",
            pg.port
        ),
    )
    .await;
    let c = connect_without_password(&s, "nobody_at_all", "forced")
        .await
        .expect("any lets an unknown user in");
    assert_eq!(
        current_user(&c).await,
        SCRAM_USER,
        "the forced user serves it"
    );
    // A listed user with a wrong password gets in too: nothing is checked.
    logs_in(&s, SCRAM_USER, "not-the-password", "appdb").await;
}

/// auth_type = password: the cleartext password is checked, against a plain secret or an md5 hash
/// in the auth file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_checks_the_cleartext_password() {
    let legacy_hash = stored_secret(MD5_USER);
    assert!(legacy_hash.starts_with("md5"), "{legacy_hash}");
    let f = files(&[(
        "users.txt",
        userlist(&[
            (SCRAM_USER, SCRAM_PASSWORD),
            (MD5_USER, legacy_hash.as_str()),
        ])
        .as_str(),
    )]);
    let s = Sluice::start(
        &format!(
            "auth_type = password\nauth_file = {}",
            path_in(&f, "users.txt")
        ),
        "",
    )
    .await;
    logs_in(&s, SCRAM_USER, SCRAM_PASSWORD, "appdb").await;
    logs_in(&s, MD5_USER, MD5_PASSWORD, "appdb").await;
    for user in [SCRAM_USER, MD5_USER] {
        let r = refusal(&s, user, "wrong-password", "appdb").await;
        assert_eq!(
            (r.code.as_str(), r.message.as_str()),
            ("28P01", PASSWORD_FAILED)
        );
    }
}

/// auth_type = md5, PgBouncer's meaning: a user whose stored secret is a SCRAM verifier is asked
/// for SCRAM, a user with an md5 hash for md5. With only the verifier in the auth file (no
/// plaintext anywhere), the pool still logs in to PostgreSQL: the client's proof is passed through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn md5_asks_for_scram_when_the_auth_file_holds_a_scram_verifier() {
    let verifier = stored_secret(SCRAM_USER);
    assert!(verifier.starts_with("SCRAM-SHA-256$"), "{verifier}");
    let legacy_hash = stored_secret(MD5_USER);
    let f = files(&[(
        "users.txt",
        userlist(&[
            (SCRAM_USER, verifier.as_str()),
            (MD5_USER, legacy_hash.as_str()),
        ])
        .as_str(),
    )]);
    let s = Sluice::start(
        &format!("auth_type = md5\nauth_file = {}", path_in(&f, "users.txt")),
        "",
    )
    .await;
    assert_eq!(first_auth_request(&s, SCRAM_USER, "appdb").await, AUTH_SASL);
    assert_eq!(first_auth_request(&s, MD5_USER, "appdb").await, AUTH_MD5);
    logs_in(&s, SCRAM_USER, SCRAM_PASSWORD, "appdb").await;
    logs_in(&s, MD5_USER, MD5_PASSWORD, "appdb").await;
    for user in [SCRAM_USER, MD5_USER] {
        let r = refusal(&s, user, "wrong-password", "appdb").await;
        assert_eq!(
            (r.code.as_str(), r.message.as_str()),
            ("28P01", PASSWORD_FAILED)
        );
    }
}

/// auth_type = scram-sha-256: a wrong password and an unknown user are refused alike (28P01, the
/// same words, no detail to tell them apart), and the unknown user is taken through the same SCRAM
/// exchange rather than refused up front.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_refuses_wrong_password_and_unknown_user_alike() {
    let s = Sluice::start("auth_type = scram-sha-256", "").await;
    logs_in(&s, SCRAM_USER, SCRAM_PASSWORD, "appdb").await;
    let wrong = refusal(&s, SCRAM_USER, "wrong-password", "appdb").await;
    assert_eq!(wrong.code, "28P01", "{wrong:?}");
    assert_eq!(wrong.message, PASSWORD_FAILED, "{wrong:?}");
    let unknown = refusal(&s, UNKNOWN_USER, "wrong-password", "appdb").await;
    assert_eq!(
        unknown, wrong,
        "an unknown user must look like a wrong password"
    );
    assert_eq!(
        first_auth_request(&s, UNKNOWN_USER, "appdb").await,
        AUTH_SASL
    );
    still_serving(&s).await;
}

// ---------------------------------------------------------------------------------------------
// 2. auth_type = cert
// ---------------------------------------------------------------------------------------------

/// auth_type = cert with client_tls_sslmode = verify-ca: a client certificate the CA signed, with
/// CN = the user, is the login; a certificate of another user, no certificate, or no TLS are not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cert_auth_with_verify_ca() {
    let pg = Postgres::shared();
    let s = Sluice::start(
        &format!(
            "auth_type = cert\n{}client_tls_ca_file = {}",
            client_tls("verify-ca"),
            pg.certs.ca.display()
        ),
        "",
    )
    .await;
    let verify = format!("sslmode=verify-ca sslrootcert={}", pg.certs.ca.display());
    let out = psql(
        conninfo(
            &s,
            SCRAM_USER,
            "appdb",
            &format!("{verify} {}", app_certificate()),
        ),
        "SELECT current_user",
    )
    .await;
    assert_eq!(answer(&out), SCRAM_USER);

    // app's certificate does not make anyone else.
    let out = psql(
        conninfo(
            &s,
            MD5_USER,
            "appdb",
            &format!("{verify} {}", app_certificate()),
        ),
        "SELECT current_user",
    )
    .await;
    let err = failure(&out);
    assert!(
        err.contains(&format!(
            "certificate authentication failed for user \"{MD5_USER}\""
        )),
        "{err}"
    );

    // verify-ca demands a certificate in the TLS handshake itself.
    let out = psql(
        conninfo(
            &s,
            SCRAM_USER,
            "appdb",
            &format!("{verify} {NO_CERTIFICATE}"),
        ),
        "SELECT current_user",
    )
    .await;
    failure(&out);

    // Without TLS there is nothing to check.
    let r = refusal(&s, SCRAM_USER, SCRAM_PASSWORD, "appdb").await;
    assert_eq!(
        (r.code.as_str(), r.message.as_str()),
        ("28000", "SSL required")
    );
}

/// auth_type = cert with client_tls_sslmode = require and a CA file: the certificate is optional
/// in the handshake, so a client without one gets through TLS and is then refused in PostgreSQL's
/// words.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cert_auth_with_require_and_a_ca_file() {
    let pg = Postgres::shared();
    let s = Sluice::start(
        &format!(
            "auth_type = cert\n{}client_tls_ca_file = {}",
            client_tls("require"),
            pg.certs.ca.display()
        ),
        "",
    )
    .await;
    let out = psql(
        conninfo(
            &s,
            SCRAM_USER,
            "appdb",
            &format!("sslmode=require {}", app_certificate()),
        ),
        "SELECT current_user",
    )
    .await;
    assert_eq!(answer(&out), SCRAM_USER);

    let out = psql(
        conninfo(
            &s,
            SCRAM_USER,
            "appdb",
            &format!("sslmode=require {NO_CERTIFICATE}"),
        ),
        "SELECT current_user",
    )
    .await;
    let err = failure(&out);
    assert!(
        err.contains(&format!(
            "certificate authentication failed for user \"{SCRAM_USER}\""
        )),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Channel binding
// ---------------------------------------------------------------------------------------------

/// Over TLS, a client that insists on channel binding (libpq `channel_binding=require`) logs in:
/// pgsluice offers SCRAM-SHA-256-PLUS. The server connection is TLS too (server_tls_sslmode's
/// default, prefer). With client_tls_sslmode = require a client in the clear is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_binding_required_by_the_client_over_tls() {
    let pg = Postgres::shared();
    let s = Sluice::start(
        &format!("auth_type = scram-sha-256\n{}", client_tls("require")),
        "",
    )
    .await;
    let out = psql(
        conninfo(
            &s,
            SCRAM_USER,
            "appdb",
            &format!(
                "password={SCRAM_PASSWORD} sslmode=verify-full sslrootcert={} channel_binding=require",
                pg.certs.ca.display()
            ),
        ),
        "SELECT current_user, ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
    )
    .await;
    assert_eq!(answer(&out), format!("{SCRAM_USER}|t"));
    let r = refusal(&s, SCRAM_USER, SCRAM_PASSWORD, "appdb").await;
    assert_eq!(
        (r.code.as_str(), r.message.as_str()),
        ("28000", "SSL required")
    );
}

// ---------------------------------------------------------------------------------------------
// 4. auth_type = hba
// ---------------------------------------------------------------------------------------------

/// auth_type = hba: the first matching line of auth_hba_file decides, per user, database and
/// transport: TLS-only users, reject lines, and md5 / scram-sha-256 / password / trust methods; a
/// connection no line matches gets PostgreSQL's "no pg_hba.conf entry" and 28000.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hba_file_decides_per_connection() {
    let f = files(&[
        (
            "users.txt",
            userlist(&[
                (SCRAM_USER, SCRAM_PASSWORD),
                (MD5_USER, MD5_PASSWORD),
                (TLS_ONLY_USER, TLS_ONLY_PASSWORD),
                ("postgres", ""),
            ])
            .as_str(),
        ),
        (
            "hba.conf",
            format!(
                "# TYPE  DATABASE USER ADDRESS METHOD\n\
                 hostssl all {TLS_ONLY_USER} 127.0.0.1/32 scram-sha-256\n\
                 hostnossl all {TLS_ONLY_USER} 127.0.0.1/32 reject\n\
                 host all {MD5_USER} 127.0.0.1/32 md5\n\
                 host appdb {SCRAM_USER} 127.0.0.1/32 scram-sha-256\n\
                 host postgres {SCRAM_USER} 127.0.0.1 255.255.255.255 password\n\
                 host all postgres 127.0.0.0/8 trust\n"
            )
            .as_str(),
        ),
    ]);
    let s = Sluice::start(
        &format!(
            "auth_type = hba\nauth_hba_file = {}\nauth_file = {}\n{}",
            path_in(&f, "hba.conf"),
            path_in(&f, "users.txt"),
            client_tls("prefer")
        ),
        "",
    )
    .await;

    // Each line's method is what the client is asked for, and the right password gets in.
    assert_eq!(first_auth_request(&s, MD5_USER, "appdb").await, AUTH_MD5);
    assert_eq!(first_auth_request(&s, SCRAM_USER, "appdb").await, AUTH_SASL);
    assert_eq!(
        first_auth_request(&s, SCRAM_USER, "postgres").await,
        AUTH_CLEARTEXT
    );
    assert_eq!(
        first_auth_request(&s, "postgres", "postgres").await,
        AUTH_OK
    );
    logs_in(&s, MD5_USER, MD5_PASSWORD, "appdb").await;
    logs_in(&s, SCRAM_USER, SCRAM_PASSWORD, "appdb").await;
    logs_in(&s, SCRAM_USER, SCRAM_PASSWORD, "postgres").await;
    let c = connect_without_password(&s, "postgres", "postgres")
        .await
        .expect("trust line");
    assert_eq!(current_user(&c).await, "postgres");
    let r = refusal(&s, SCRAM_USER, "wrong-password", "appdb").await;
    assert_eq!(
        (r.code.as_str(), r.message.as_str()),
        ("28P01", PASSWORD_FAILED)
    );

    // The TLS-only user: refused in the clear by its reject line, let in over TLS (and PostgreSQL,
    // which rejects it without TLS too, sees the pooler's server connection over TLS).
    let r = refusal(&s, TLS_ONLY_USER, TLS_ONLY_PASSWORD, "appdb").await;
    assert_eq!(r.code, "28000", "{r:?}");
    assert_eq!(
        r.message,
        "pg_hba.conf rejects connection for user \"<user>\""
    );
    let out = psql(
        conninfo(
            &s,
            TLS_ONLY_USER,
            "appdb",
            &format!("password={TLS_ONLY_PASSWORD} sslmode=require"),
        ),
        "SELECT current_user",
    )
    .await;
    assert_eq!(answer(&out), TLS_ONLY_USER);

    // No line for app in template1.
    let r = refusal(&s, SCRAM_USER, SCRAM_PASSWORD, "template1").await;
    assert_eq!(r.code, "28000", "{r:?}");
    assert_eq!(
        r.message,
        "no pg_hba.conf entry for host \"127.0.0.1\", user \"<user>\", database \"template1\", no encryption"
    );
    still_serving(&s).await;
}

// ---------------------------------------------------------------------------------------------
// 5. peer on the unix socket
// ---------------------------------------------------------------------------------------------

/// The OS user running the tests, as `peer` sees it.
fn os_user() -> String {
    let out = std::process::Command::new("id")
        .arg("-un")
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// An hba `peer` line lets a unix-socket client in when its OS user is the user name it gives, and
/// refuses any other name with 28000; the database entry forces the server login.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_admits_the_os_user_on_the_unix_socket_only() {
    let pg = Postgres::shared();
    let me = os_user();
    let socket_dir = tempfile::tempdir().unwrap();
    let f = files(&[
        (
            "hba.conf",
            "local all all peer\nhost all all 127.0.0.1/32 reject\n",
        ),
        (
            "users.txt",
            userlist(&[(SCRAM_USER, SCRAM_PASSWORD)]).as_str(),
        ),
    ]);
    let s = Sluice::start_exact(
        &format!(
            "auth_type = hba\nauth_hba_file = {}\nauth_file = {}\nunix_socket_dir = {}\n",
            path_in(&f, "hba.conf"),
            path_in(&f, "users.txt"),
            socket_dir.path().display()
        ),
        &format!(
            "peerdb = host=127.0.0.1 port={} dbname=appdb user={SCRAM_USER}",
            pg.port
        ),
    )
    .await;
    let over_socket = |user: &str| {
        format!(
            "host={} port={} user={user} dbname=peerdb",
            socket_dir.path().display(),
            s.addr.port()
        )
    };
    let (c, conn) = tokio_postgres::connect(&over_socket(&me), tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("peer refused the OS user {me}: {e}"));
    tokio::spawn(async move {
        let _ = conn.await;
    });
    assert_eq!(current_user(&c).await, SCRAM_USER);

    let other = if me == MD5_USER { SCRAM_USER } else { MD5_USER };
    let e = match tokio_postgres::connect(&over_socket(other), tokio_postgres::NoTls).await {
        Ok(_) => panic!("peer let {other} in for OS user {me}"),
        Err(e) => e,
    };
    let message = e
        .as_db_error()
        .map(|d| d.message().to_owned())
        .unwrap_or_default();
    assert_eq!(sqlstate(&e), Some("28000"), "{message}");
    assert!(message.contains("peer authentication failed"), "{message}");
    // TCP clients meet the reject line.
    let e = match s.connect_as(&me, "unused", "peerdb").await {
        Ok(_) => panic!("a TCP client got past the reject line"),
        Err(e) => e,
    };
    assert_eq!(sqlstate(&e), Some("28000"), "{}", error_text(&e));
}
