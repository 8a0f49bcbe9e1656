//! PostgreSQL `md5` password authentication (AuthenticationMD5Password).

use ::md5::{Digest, Md5};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::auth::secret::Secret;

/// What PostgreSQL stores for an md5 password: `"md5" + hex(md5(password || user))`.
pub fn md5_hex_password(user: &str, password: &[u8]) -> String {
    let inner = inner_hex(password, user.as_bytes());
    let mut out = String::with_capacity(35);
    out.push_str("md5");
    out.extend(inner.iter().map(|&b| char::from(b)));
    out
}

/// Checks the client's PasswordMessage for md5 auth: `response` is
/// `"md5" + hex(md5(hex(md5(password || user)) || salt))` without the
/// trailing NUL. Works for plain and md5 secrets; a SCRAM verifier cannot
/// answer md5, so it always fails. `user` must be the startup-packet user
/// the md5 hash was made with.
pub fn verify_md5_response(stored: &Secret, user: &str, salt: [u8; 4], response: &[u8]) -> bool {
    let Some(expected) = client_response(stored, user, salt) else {
        return false;
    };
    // Lengths are public (always 35 for a well-formed response).
    expected.as_slice().ct_eq(response).into()
}

/// The response pgsluice sends a server that asks for md5: from the password, or from the md5
/// hash an auth file stores (`md5` + hex). A SCRAM verifier cannot answer md5: `None`.
pub fn client_response(stored: &Secret, user: &str, salt: [u8; 4]) -> Option<Zeroizing<Vec<u8>>> {
    let inner = match stored {
        Secret::Plain(password) => inner_hex(password.as_bytes(), user.as_bytes()),
        Secret::Md5(hash) => hash.clone(),
        Secret::Scram(_) => return None,
    };
    Some(salted_response(&inner, salt))
}

/// `"md5" + hex(md5(inner_hex || salt))`, the response a client sends.
fn salted_response(inner_hex: &[u8; 32], salt: [u8; 4]) -> Zeroizing<Vec<u8>> {
    let mut hasher = Md5::new();
    hasher.update(inner_hex);
    hasher.update(salt);
    let digest = Zeroizing::new(<[u8; 16]>::from(hasher.finalize()));
    let mut out = Zeroizing::new(Vec::with_capacity(35));
    out.extend_from_slice(b"md5");
    out.extend_from_slice(&*hex(&digest));
    out
}

/// hex(md5(password || user)), lowercase.
fn inner_hex(password: &[u8], user: &[u8]) -> Zeroizing<[u8; 32]> {
    let mut hasher = Md5::new();
    hasher.update(password);
    hasher.update(user);
    let digest = Zeroizing::new(<[u8; 16]>::from(hasher.finalize()));
    hex(&digest)
}

fn hex(digest: &[u8; 16]) -> Zeroizing<[u8; 32]> {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = Zeroizing::new([0u8; 32]);
    for (pair, byte) in out.chunks_exact_mut(2).zip(digest) {
        let hi = DIGITS.get(usize::from(byte >> 4)).copied().unwrap_or(b'0');
        let lo = DIGITS.get(usize::from(byte & 0xf)).copied().unwrap_or(b'0');
        pair.copy_from_slice(&[hi, lo]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::secret::ScramVerifier;

    const STORED: &str = "md532e12f215ba27cb750c9e093ce4b5127";

    /// Client side computed independently of the code under test.
    fn client_response(password: &str, user: &str, salt: [u8; 4]) -> Vec<u8> {
        let inner = format!("{:x}", Md5::digest(format!("{password}{user}")));
        let mut outer = inner.into_bytes();
        outer.extend_from_slice(&salt);
        format!("md5{:x}", Md5::digest(&outer)).into_bytes()
    }

    #[test]
    fn hex_password_known_value() {
        assert_eq!(md5_hex_password("postgres", b"password"), STORED);
        assert_eq!(
            md5_hex_password("", b""),
            "md5d41d8cd98f00b204e9800998ecf8427e"
        );
    }

    #[test]
    fn salted_response_known_value() {
        let salt = [1, 2, 3, 4];
        let response = client_response("password", "postgres", salt);
        // md5("32e12f215ba27cb750c9e093ce4b5127" || 01 02 03 04), by hand.
        let mut input = b"32e12f215ba27cb750c9e093ce4b5127".to_vec();
        input.extend_from_slice(&[1, 2, 3, 4]);
        assert_eq!(
            response,
            format!("md5{:x}", Md5::digest(&input)).into_bytes()
        );
        for secret in [Secret::parse(STORED), Secret::parse("password")] {
            assert!(verify_md5_response(&secret, "postgres", salt, &response));
        }
    }

    #[test]
    fn uppercase_stored_hash() {
        let secret = Secret::parse(&STORED.to_uppercase().replacen("MD5", "md5", 1));
        let response = client_response("password", "postgres", [9, 9, 9, 9]);
        assert!(verify_md5_response(
            &secret,
            "postgres",
            [9, 9, 9, 9],
            &response
        ));
    }

    #[test]
    fn rejects_wrong_inputs() {
        let salt = [1, 2, 3, 4];
        let good = client_response("password", "postgres", salt);
        let secret = Secret::parse(STORED);
        let plain = Secret::parse("password");
        for s in [&secret, &plain] {
            assert!(!verify_md5_response(s, "postgres", [4, 3, 2, 1], &good));
            let wrong = client_response("passwort", "postgres", salt);
            assert!(!verify_md5_response(s, "postgres", salt, &wrong));
            let mut with_nul = good.clone();
            with_nul.push(0);
            assert!(!verify_md5_response(s, "postgres", salt, &with_nul));
            assert!(!verify_md5_response(s, "postgres", salt, &good[..34]));
            assert!(!verify_md5_response(s, "postgres", salt, b""));
            let upper = good.to_ascii_uppercase();
            assert!(!verify_md5_response(s, "postgres", salt, &upper));
        }
        // Plain secrets hash with the given user, so a different user fails.
        assert!(!verify_md5_response(&plain, "other", salt, &good));
    }

    #[test]
    fn scram_secret_never_verifies() {
        let v = ScramVerifier::from_password(b"password", b"salt", 1);
        let secret = Secret::Scram(v);
        let salt = [1, 2, 3, 4];
        let response = client_response("password", "postgres", salt);
        assert!(!verify_md5_response(&secret, "postgres", salt, &response));
    }
}
