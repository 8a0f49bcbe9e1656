//! auth_query against the real PostgreSQL: CloudNativePG's wiring (the auth user logged in by its
//! client certificate, `public.user_search`, SCRAM pass-through for users the auth file lacks) and
//! auth_user on one database entry with PgBouncer's default query, which honours VALID UNTIL.
#![allow(clippy::unwrap_used, clippy::zombie_processes)]

mod common;

use common::auth::*;
use common::*;

// ---------------------------------------------------------------------------------------------
// 1. CloudNativePG: auth_query as the auth user, logged in by certificate
// ---------------------------------------------------------------------------------------------

/// CloudNativePG's pooler configuration (pgbouncer.ini as the operator writes it, minus what
/// pgsluice does not have): auth_query through `public.user_search` as `cnpg_pooler_pgbouncer`,
/// which logs in to PostgreSQL with its client certificate. With `with_certificate` false the
/// certificate pair is left out.
fn cnpg_config(hba: &str, with_certificate: bool) -> String {
    let c = &Postgres::shared().certs;
    let mut ini = format!(
        "pool_mode = session\n\
         auth_user = {AUTH_USER}\n\
         auth_query = SELECT usename, passwd FROM public.user_search($1)\n\
         auth_dbname = postgres\n\
         auth_hba_file = {hba}\n\
         auth_type = hba\n\
         client_tls_ca_file = {}\n\
         {}\
         ignore_startup_parameters = extra_float_digits,options\n\
         server_tls_ca_file = {}\n\
         server_tls_sslmode = verify-ca\n",
        c.ca.display(),
        client_tls("prefer"),
        c.ca.display(),
    );
    if with_certificate {
        ini.push_str(&format!(
            "server_tls_cert_file = {}\nserver_tls_key_file = {}\n",
            c.pooler_client_cert.display(),
            c.pooler_client_key.display()
        ));
    }
    ini
}

/// The pooler's pg_hba.conf as CloudNativePG writes it by default.
const CNPG_HBA: &str = "host all all 0.0.0.0/0 md5\nhost all all ::/0 md5\n";

/// A user missing from the auth file logs in with SCRAM: its verifier comes from user_search, run
/// by the auth user over a certificate login, and the pool logs in to PostgreSQL (which allows
/// that user only scram-sha-256) with the key recovered from the client's proof. Wrong password
/// and unknown user are refused alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudnativepg_auth_query_with_scram_pass_through() {
    let f = files(&[("pg_hba.conf", CNPG_HBA)]);
    let s = Sluice::start(&cnpg_config(&path_in(&f, "pg_hba.conf"), true), "").await;

    // An md5 line with a fetched SCRAM verifier asks for SCRAM (PgBouncer's rule).
    assert_eq!(first_auth_request(&s, QUERY_USER, "appdb").await, AUTH_SASL);
    let c = logs_in(&s, QUERY_USER, QUERY_PASSWORD, "appdb").await;
    // The server connection is TLS and presents the auth user's certificate.
    let row = c
        .query_one(
            "SELECT ssl, coalesce(client_dn, '') FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0), "server connection without TLS");
    let dn: String = row.get(1);
    assert!(dn.contains(&format!("CN={AUTH_USER}")), "client DN {dn:?}");
    // PostgreSQL 16+ names the method it authenticated the session with.
    let version: i32 = first_value(&c.simple_query("SHOW server_version_num").await.unwrap())
        .unwrap()
        .parse()
        .unwrap();
    if version >= 160_000 {
        let expected = format!("scram-sha-256:{QUERY_USER}");
        assert_eq!(
            first_value(&c.simple_query("SELECT system_user").await.unwrap()).as_deref(),
            Some(expected.as_str())
        );
    }
    // The pooler never had the plaintext: not in its auth file, not in its configuration.
    for name in ["userlist.txt", "pgbouncer.ini"] {
        let text = std::fs::read_to_string(s.dir.path().join(name)).unwrap();
        assert!(!text.contains(QUERY_PASSWORD), "{name} holds the password");
        assert!(!text.contains(QUERY_USER), "{name} knows {QUERY_USER}");
    }

    // Over TLS as well (SCRAM-SHA-256-PLUS when libpq takes it).
    let out = psql(
        conninfo(
            &s,
            QUERY_USER,
            "appdb",
            &format!("password={QUERY_PASSWORD} sslmode=require {NO_CERTIFICATE}"),
        ),
        "SELECT current_user",
    )
    .await;
    assert_eq!(answer(&out), QUERY_USER);

    let wrong = refusal(&s, QUERY_USER, "wrong-password", "appdb").await;
    assert_eq!(wrong.code, "28P01", "{wrong:?}");
    assert_eq!(wrong.message, PASSWORD_FAILED, "{wrong:?}");
    let unknown = refusal(&s, UNKNOWN_USER, "wrong-password", "appdb").await;
    assert_eq!(
        unknown, wrong,
        "an unknown user must look like a wrong password"
    );
    // A refused attempt does not spoil the next good one.
    logs_in(&s, QUERY_USER, QUERY_PASSWORD, "appdb").await;
}

/// Without its certificate the auth user cannot log in (PostgreSQL has only a `cert` line for it),
/// so users known only through auth_query cannot either: the wiring rests on that certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_query_needs_the_auth_users_certificate() {
    let f = files(&[("pg_hba.conf", CNPG_HBA)]);
    let s = Sluice::start(&cnpg_config(&path_in(&f, "pg_hba.conf"), false), "").await;
    let e = match s.connect_as(QUERY_USER, QUERY_PASSWORD, "appdb").await {
        Ok(_) => panic!("{QUERY_USER} got in although the auth user could not log in"),
        Err(e) => e,
    };
    assert!(e.as_db_error().is_some(), "no ErrorResponse: {e}");
    // Users from the auth file are not affected.
    logs_in(&s, SCRAM_USER, SCRAM_PASSWORD, "appdb").await;
}

// ---------------------------------------------------------------------------------------------
// 2. auth_user per database entry, with the default query
// ---------------------------------------------------------------------------------------------

/// auth_user set on one database entry, with PgBouncer's default auth_query over pg_authid: a user
/// the auth file lacks logs in there (SCRAM pass-through), a role whose password has expired
/// (rolvaliduntil in the past) is refused like a wrong password, and a database without auth_user
/// knows neither.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_database_auth_user_with_the_default_query_honours_valid_until() {
    let pg = Postgres::shared();
    let expired = unique("expired");
    pg.psql_super(&format!(
        "SET password_encryption = 'scram-sha-256';\
         CREATE ROLE {expired} LOGIN PASSWORD 'expired-secret' VALID UNTIL '2001-01-01'"
    ));
    let s = Sluice::start_exact(
        "auth_type = scram-sha-256\n",
        &format!(
            "looked = host=127.0.0.1 port={port} dbname=appdb auth_user=postgres auth_dbname=postgres\n\
             postgres = host=127.0.0.1 port={port} dbname=postgres\n\
             plain = host=127.0.0.1 port={port} dbname=appdb",
            port = pg.port
        ),
    )
    .await;
    logs_in(&s, QUERY_USER, QUERY_PASSWORD, "looked").await;
    let wrong = refusal(&s, QUERY_USER, "not-it", "looked").await;
    assert_eq!(wrong.code, "28P01", "{wrong:?}");
    let gone = refusal(&s, &expired, "expired-secret", "looked").await;
    assert_eq!(
        gone, wrong,
        "an expired password must look like a wrong one"
    );
    // Without auth_user on the entry there is no lookup: the user is unknown there.
    let unknown = refusal(&s, QUERY_USER, QUERY_PASSWORD, "plain").await;
    assert_eq!(unknown.code, "28P01", "{unknown:?}");
}
