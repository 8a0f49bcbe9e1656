//! Certificates made at test time with rcgen: two CAs (one trusted by PostgreSQL, one not), server
//! certificates for every sslmode check and client certificates for `cert` authentication.
//! All keys are ECDSA P-256, written as PKCS#8 PEM with mode 0600.

use rcgen::{
    date_time_ymd, BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub struct TestCerts {
    pub dir: PathBuf,
    /// The CA PostgreSQL trusts (`ssl_ca_file`); signs everything but the untrusted certificate.
    pub ca: PathBuf,
    /// A CA nobody trusts; signs `untrusted_cert`.
    pub other_ca: PathBuf,
    /// SAN DNS `localhost` and IP 127.0.0.1, CN localhost; signed by `ca`. PostgreSQL's certificate.
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// SAN only DNS `db.example.invalid`; signed by `ca` (fails verify-full against 127.0.0.1).
    pub wrong_name_cert: PathBuf,
    pub wrong_name_key: PathBuf,
    /// SAN localhost/127.0.0.1, signed by `other_ca` (fails verify-ca).
    pub untrusted_cert: PathBuf,
    pub untrusted_key: PathBuf,
    /// CN `cnpg_pooler_pgbouncer`, signed by `ca`, for `cert` authentication of the auth user.
    pub pooler_client_cert: PathBuf,
    pub pooler_client_key: PathBuf,
    /// CN = `SCRAM_USER`, signed by `ca`.
    pub app_client_cert: PathBuf,
    pub app_client_key: PathBuf,
}

/// A certificate and its key, kept to sign others.
struct Issuer {
    cert: Certificate,
    key: KeyPair,
}

/// Valid from a day ago to a year from now.
fn validity(params: &mut CertificateParams) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970");
    let epoch = date_time_ymd(1970, 1, 1);
    const DAY: u64 = 24 * 60 * 60;
    params.not_before = epoch + (now - Duration::from_secs(DAY));
    params.not_after = epoch + (now + Duration::from_secs(365 * DAY));
}

fn distinguished_name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "pgsluice tests");
    dn.push(DnType::CommonName, cn);
    dn
}

fn write(path: &Path, contents: &str, mode: u32) {
    std::fs::write(path, contents).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn new_ca(cn: &str) -> Issuer {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    validity(&mut params);
    params.distinguished_name = distinguished_name(cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.self_signed(&key).unwrap();
    Issuer { cert, key }
}

/// A leaf certificate signed by `issuer`: `sans` are DNS names or IP addresses.
fn leaf(
    issuer: &Issuer,
    cn: &str,
    sans: &[&str],
    eku: ExtendedKeyUsagePurpose,
) -> (Certificate, KeyPair) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(
        sans.iter()
            .map(|s| (*s).to_owned())
            .collect::<Vec<String>>(),
    )
    .unwrap();
    validity(&mut params);
    params.distinguished_name = distinguished_name(cn);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![eku];
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&key, &issuer.cert, &issuer.key).unwrap();
    (cert, key)
}

impl TestCerts {
    /// Generates every certificate into `dir` (created if missing): `<name>.crt` and `<name>.key`.
    /// Ownership is left to the caller (PostgreSQL wants its key owned by the user it runs as).
    pub fn generate(dir: &Path) -> TestCerts {
        std::fs::create_dir_all(dir).unwrap();
        let ca = new_ca("pgsluice test CA");
        let other_ca = new_ca("pgsluice untrusted CA");

        let save_ca = |name: &str, issuer: &Issuer| -> PathBuf {
            let path = dir.join(format!("{name}.crt"));
            write(&path, &issuer.cert.pem(), 0o644);
            path
        };
        let save_leaf = |name: &str, (cert, key): (Certificate, KeyPair)| -> (PathBuf, PathBuf) {
            let crt = dir.join(format!("{name}.crt"));
            let k = dir.join(format!("{name}.key"));
            write(&crt, &cert.pem(), 0o644);
            write(&k, &key.serialize_pem(), 0o600);
            (crt, k)
        };

        let ca_path = save_ca("ca", &ca);
        let other_ca_path = save_ca("other_ca", &other_ca);
        let local = ["localhost", "127.0.0.1"];
        let (server_cert, server_key) = save_leaf(
            "server",
            leaf(
                &ca,
                "localhost",
                &local,
                ExtendedKeyUsagePurpose::ServerAuth,
            ),
        );
        let (wrong_name_cert, wrong_name_key) = save_leaf(
            "wrong_name",
            leaf(
                &ca,
                "db.example.invalid",
                &["db.example.invalid"],
                ExtendedKeyUsagePurpose::ServerAuth,
            ),
        );
        let (untrusted_cert, untrusted_key) = save_leaf(
            "untrusted",
            leaf(
                &other_ca,
                "localhost",
                &local,
                ExtendedKeyUsagePurpose::ServerAuth,
            ),
        );
        let (pooler_client_cert, pooler_client_key) = save_leaf(
            "pooler_client",
            leaf(
                &ca,
                super::AUTH_USER,
                &[],
                ExtendedKeyUsagePurpose::ClientAuth,
            ),
        );
        let (app_client_cert, app_client_key) = save_leaf(
            "app_client",
            leaf(
                &ca,
                super::SCRAM_USER,
                &[],
                ExtendedKeyUsagePurpose::ClientAuth,
            ),
        );
        TestCerts {
            dir: dir.to_owned(),
            ca: ca_path,
            other_ca: other_ca_path,
            server_cert,
            server_key,
            wrong_name_cert,
            wrong_name_key,
            untrusted_cert,
            untrusted_key,
            pooler_client_cert,
            pooler_client_key,
            app_client_cert,
            app_client_key,
        }
    }
}
