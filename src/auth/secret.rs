//! Stored secrets in the formats PgBouncer's auth file (and `pg_authid`) use.

use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// Iteration count PostgreSQL uses by default (`scram_iterations`); also what
/// we use when deriving a verifier from a plain-text secret.
pub const DEFAULT_ITERATIONS: u32 = 4096;

const SCRAM_PREFIX: &str = "SCRAM-SHA-256$";

/// A password secret as stored in the auth file.
///
/// Each variant wipes its secret material when dropped.
#[derive(Clone)]
pub enum Secret {
    /// Clear-text password.
    Plain(Zeroizing<String>),
    /// The 32 lowercase hex digits after `md5` in `md5<hex(md5(password || user))>`.
    /// Password-equivalent for md5 auth, hence secret.
    Md5(Zeroizing<[u8; 32]>),
    /// A SCRAM-SHA-256 verifier.
    Scram(ScramVerifier),
}

impl Secret {
    /// Classifies an auth-file password the way PostgreSQL and PgBouncer do:
    /// `md5` + 32 hex digits is an md5 hash, a well-formed
    /// `SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>` is a verifier, and
    /// anything else (including a malformed SCRAM string) is plain text.
    pub fn parse(s: &str) -> Secret {
        if let Some(hash) = parse_md5(s) {
            return Secret::Md5(hash);
        }
        if let Some(verifier) = ScramVerifier::parse(s) {
            return Secret::Scram(verifier);
        }
        Secret::Plain(Zeroizing::new(s.to_owned()))
    }

    /// The verifier to run a SCRAM exchange against: the stored one, or for
    /// a plain-text secret one derived with `salt` (the caller supplies fresh
    /// random bytes, 16 like PostgreSQL) and [`DEFAULT_ITERATIONS`]. `None`
    /// for an md5 secret, which cannot be turned into a SCRAM verifier.
    pub fn scram_verifier(&self, salt: &[u8]) -> Option<ScramVerifier> {
        match self {
            Secret::Plain(password) => Some(ScramVerifier::from_password(
                password.as_bytes(),
                salt,
                DEFAULT_ITERATIONS,
            )),
            Secret::Md5(_) => None,
            Secret::Scram(verifier) => Some(verifier.clone()),
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Secret::Plain(_) => f.write_str("Plain(<redacted>)"),
            Secret::Md5(_) => f.write_str("Md5(<redacted>)"),
            Secret::Scram(v) => f.debug_tuple("Scram").field(v).finish(),
        }
    }
}

fn parse_md5(s: &str) -> Option<Zeroizing<[u8; 32]>> {
    let hex = s.strip_prefix("md5")?.as_bytes();
    if hex.len() != 32 || !hex.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    let mut out = Zeroizing::new([0u8; 32]);
    for (dst, src) in out.iter_mut().zip(hex) {
        // Clients send lowercase hex; normalise so comparisons match.
        *dst = src.to_ascii_lowercase();
    }
    Some(out)
}

/// A SCRAM-SHA-256 verifier (RFC 5802 section 3).
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct ScramVerifier {
    pub iterations: u32,
    pub salt: Vec<u8>,
    /// SHA256(ClientKey).
    pub stored_key: [u8; 32],
    /// HMAC(SaltedPassword, "Server Key").
    pub server_key: [u8; 32],
}

impl ScramVerifier {
    /// Derives a verifier from a password. The password is used as given: no
    /// SASLprep, which only matters for non-ASCII passwords.
    pub fn from_password(password: &[u8], salt: &[u8], iterations: u32) -> ScramVerifier {
        let salted = Zeroizing::new(hi(password, salt, iterations));
        let client_key = Zeroizing::new(hmac_sha256(&*salted, &[b"Client Key"]));
        ScramVerifier {
            iterations,
            salt: salt.to_vec(),
            stored_key: sha256(&*client_key),
            server_key: hmac_sha256(&*salted, &[b"Server Key"]),
        }
    }

    /// Parses PostgreSQL's `SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>`.
    pub fn parse(s: &str) -> Option<ScramVerifier> {
        let rest = s.strip_prefix(SCRAM_PREFIX)?;
        let (params, keys) = rest.split_once('$')?;
        let (iterations, salt) = params.split_once(':')?;
        let (stored_key, server_key) = keys.split_once(':')?;
        // `u32::from_str` would also take a leading '+'.
        if iterations.is_empty() || !iterations.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let iterations: u32 = iterations.parse().ok().filter(|&i| i > 0)?;
        let salt = STANDARD.decode(salt).ok().filter(|s| !s.is_empty())?;
        Some(ScramVerifier {
            iterations,
            salt,
            stored_key: decode_key(stored_key)?,
            server_key: decode_key(server_key)?,
        })
    }

    /// Formats the verifier the way PostgreSQL stores it.
    pub fn to_pg_string(&self) -> String {
        format!(
            "{SCRAM_PREFIX}{}:{}${}:{}",
            self.iterations,
            STANDARD.encode(&self.salt),
            STANDARD.encode(self.stored_key),
            STANDARD.encode(self.server_key)
        )
    }
}

impl fmt::Debug for ScramVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramVerifier")
            .field("iterations", &self.iterations)
            .field("salt", &"<redacted>")
            .field("stored_key", &"<redacted>")
            .field("server_key", &"<redacted>")
            .finish()
    }
}

fn decode_key(s: &str) -> Option<[u8; 32]> {
    let bytes = Zeroizing::new(STANDARD.decode(s).ok()?);
    <[u8; 32]>::try_from(bytes.as_slice()).ok()
}

pub(crate) fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// An HMAC-SHA-256 instance keyed with `key`.
///
/// Builds the block-sized key itself (RFC 2104: hash if longer, zero-pad) so
/// that construction is infallible without an `unwrap`.
pub(crate) fn keyed_hmac(key: &[u8]) -> Hmac<Sha256> {
    let mut block = Zeroizing::new([0u8; 64]);
    let hashed;
    let key = if key.len() > block.len() {
        hashed = Zeroizing::new(sha256(key));
        &hashed[..]
    } else {
        key
    };
    for (dst, src) in block.iter_mut().zip(key) {
        *dst = *src;
    }
    <Hmac<Sha256> as KeyInit>::new((&*block).into())
}

/// HMAC-SHA-256 of the concatenation of `parts`.
pub(crate) fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = keyed_hmac(key);
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// Hi() from RFC 5802: PBKDF2-HMAC-SHA-256 with a single output block.
pub(crate) fn hi(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    // Key once and clone the state per round instead of re-keying.
    let base = keyed_hmac(password);
    let mut mac = base.clone();
    mac.update(salt);
    mac.update(&1u32.to_be_bytes());
    let mut u = Zeroizing::new(<[u8; 32]>::from(mac.finalize().into_bytes()));
    let mut out = *u;
    for _ in 1..iterations {
        let mut mac = base.clone();
        mac.update(&*u);
        *u = mac.finalize().into_bytes().into();
        for (o, b) in out.iter_mut().zip(u.iter()) {
            *o ^= b;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc4231() {
        // RFC 4231 test case 2 and case 6 (key longer than the block size).
        let mac = hmac_sha256(b"Jefe", &[b"what do ya want ", b"for nothing?"]);
        assert_eq!(
            hex(&mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let mac = hmac_sha256(
            &[0xaa; 131],
            &[b"Test Using Larger Than Block-Size Key - Hash Key First"],
        );
        assert_eq!(
            hex(&mac),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
        // Exactly block-sized key goes through the padding path unchanged.
        let key = [0x0b; 64];
        let mut reference = <Hmac<Sha256> as Mac>::new_from_slice(&key).unwrap();
        reference.update(b"x");
        let want: [u8; 32] = reference.finalize().into_bytes().into();
        assert_eq!(hmac_sha256(&key, &[b"x"]), want);
    }

    #[test]
    fn hi_matches_pbkdf2_vector() {
        // PBKDF2-HMAC-SHA256 vectors (RFC 7914 section 11 / common test set).
        assert_eq!(
            hex(&hi(b"password", b"salt", 1)),
            "120fb6cffcf8b32c43e7225256c4f837a86548c92ccc35480805987cb70be17b"
        );
        assert_eq!(
            hex(&hi(b"password", b"salt", 4096)),
            "c5e478d59288c841aa530db6845c4c8d962893a001ce4e11a4963873aa98134a"
        );
    }

    #[test]
    fn parse_plain() {
        for s in ["", "secret", "md5", "md5abc", "SCRAM-SHA-256$"] {
            match Secret::parse(s) {
                Secret::Plain(p) => assert_eq!(p.as_str(), s),
                other => panic!("{s:?} parsed as {other:?}"),
            }
        }
    }

    #[test]
    fn parse_md5() {
        let s = "md532E12F215BA27CB750C9E093CE4A5127";
        match Secret::parse(s) {
            Secret::Md5(h) => assert_eq!(&h[..], b"32e12f215ba27cb750c9e093ce4a5127"),
            other => panic!("{other:?}"),
        }
        // Wrong length or non-hex: plain.
        for s in [
            "md532e12f215ba27cb750c9e093ce4a512",
            "md532e12f215ba27cb750c9e093ce4a51277",
            "md532e12f215ba27cb750c9e093ce4a512g",
            "MD532e12f215ba27cb750c9e093ce4a5127",
        ] {
            assert!(matches!(Secret::parse(s), Secret::Plain(_)), "{s}");
        }
    }

    #[test]
    fn parse_scram_roundtrip() {
        let v = ScramVerifier::from_password(b"pencil", b"0123456789abcdef", 4096);
        let s = v.to_pg_string();
        assert!(s.starts_with("SCRAM-SHA-256$4096:MDEyMzQ1Njc4OWFiY2RlZg==$"));
        match Secret::parse(&s) {
            Secret::Scram(p) => {
                assert_eq!(p.iterations, 4096);
                assert_eq!(p.salt, b"0123456789abcdef");
                assert_eq!(p.stored_key, v.stored_key);
                assert_eq!(p.server_key, v.server_key);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn parse_scram_rfc7677_keys() {
        // Verifier PostgreSQL would store for "pencil" with the RFC 7677 salt.
        let salt = STANDARD.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let v = ScramVerifier::from_password(b"pencil", &salt, 4096);
        let salted = hi(b"pencil", &salt, 4096);
        let client_key = hmac_sha256(&salted, &[b"Client Key"]);
        assert_eq!(v.stored_key, sha256(&client_key));
        assert_eq!(v.server_key, hmac_sha256(&salted, &[b"Server Key"]));
        let s = v.to_pg_string();
        assert!(matches!(Secret::parse(&s), Secret::Scram(_)));
    }

    #[test]
    fn parse_malformed_scram_is_plain() {
        let good = ScramVerifier::from_password(b"x", b"salt", 10).to_pg_string();
        let (head, keys) = good.rsplit_once('$').unwrap();
        let (stored, server) = keys.split_once(':').unwrap();
        let bad = [
            format!("{head}${stored}"),                       // no ServerKey
            format!("{head}${stored}:{}", &server[4..]),      // short key
            format!("{head}${stored}:{server}:"),             // trailing junk
            format!("{head}$!!!!:{server}"),                  // bad base64
            good.replacen("$10:", "$0:", 1),                  // zero iterations
            good.replacen("$10:", "$+10:", 1),                // sign
            good.replacen("$10:", "$99999999999:", 1),        // overflow
            good.replacen("$10:", "$:", 1),                   // empty count
            good.replacen(":c2FsdA==$", ":$", 1),             // empty salt
            good.replacen("SCRAM-SHA-256", "SCRAM-SHA-1", 1), // other mech
        ];
        for s in &bad {
            assert!(matches!(Secret::parse(s), Secret::Plain(_)), "{s}");
        }
    }

    #[test]
    fn scram_verifier_from_secret() {
        let salt = b"saltsaltsaltsalt";
        let plain = Secret::parse("pencil");
        let v = plain.scram_verifier(salt).unwrap();
        let want = ScramVerifier::from_password(b"pencil", salt, DEFAULT_ITERATIONS);
        assert_eq!(v.stored_key, want.stored_key);
        assert_eq!(v.salt, salt);
        let scram = Secret::parse(&want.to_pg_string());
        assert_eq!(scram.scram_verifier(b"ignored").unwrap().salt, salt);
        let md5 = Secret::parse("md532e12f215ba27cb750c9e093ce4a5127");
        assert!(md5.scram_verifier(salt).is_none());
    }

    #[test]
    fn debug_is_redacted() {
        let v = ScramVerifier::from_password(b"pencil", b"salt", 1);
        for s in [
            Secret::parse("hunter2"),
            Secret::parse("md532e12f215ba27cb750c9e093ce4a5127"),
            Secret::parse(&v.to_pg_string()),
        ] {
            let d = format!("{s:?}");
            assert!(d.contains("<redacted>"), "{d}");
            for leak in ["hunter2", "32e12f", &STANDARD.encode(v.stored_key)] {
                assert!(!d.contains(leak), "{d}");
            }
        }
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }
}
