//! Sans-IO server side of SCRAM-SHA-256 (RFC 5802, RFC 7677) as PostgreSQL
//! speaks it: the username in client-first is ignored, there is no authzid,
//! and channel binding is not offered (only `SCRAM-SHA-256` is advertised).
//!
//! Flow: [`ScramServer::new`] → [`ScramServer::client_first`] (send the
//! returned server-first in AuthenticationSASLContinue) →
//! [`ScramServerWaitingFinal::client_final`] (send `server_final` in
//! AuthenticationSASLFinal, then AuthenticationOk). [`ScramState::step`]
//! wraps the same flow for callers that keep one state field.

use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use subtle::{Choice, ConstantTimeEq};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::auth::secret::{hmac_sha256, sha256, ScramVerifier, DEFAULT_ITERATIONS};

/// Longest client message accepted; real ones are ~100 bytes.
pub const MAX_MESSAGE_LEN: usize = 4096;

/// Why an exchange failed. Messages carry no secret material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ScramError {
    /// The client broke the protocol (SQLSTATE 08P01).
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    /// Well-formed exchange, wrong password or unknown user (SQLSTATE 28P01).
    #[error("SCRAM proof verification failed")]
    InvalidProof,
}

impl ScramError {
    /// SQLSTATE for the ErrorResponse sent to the client.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            ScramError::Malformed(_) => "08P01",
            ScramError::InvalidProof => "28P01",
        }
    }
}

/// Server waiting for client-first-message.
pub struct ScramServer {
    verifier: ScramVerifier,
    server_nonce: String,
    /// Fail at the proof check whatever the client sends: mock exchanges for
    /// unknown users must not be passable even if someone finds a proof.
    doomed: bool,
}

/// Server waiting for client-final-message.
pub struct ScramServerWaitingFinal {
    verifier: ScramVerifier,
    doomed: bool,
    /// Expected `c=` value: base64 of the gs2 header (no binding data).
    channel_binding: String,
    /// client nonce + server nonce, which client-final must echo.
    nonce: Vec<u8>,
    /// `client-first-bare "," server-first ","`; client-final-without-proof
    /// completes the AuthMessage.
    auth_message_prefix: Vec<u8>,
}

/// Successful end of an exchange.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct ScramSuccess {
    /// server-final-message (`v=...`), for AuthenticationSASLFinal.
    pub server_final: Vec<u8>,
    /// ClientKey recovered from the proof; lets the pooler authenticate to
    /// PostgreSQL with SCRAM on the client's behalf. Wiped on drop.
    pub client_key: [u8; 32],
}

/// The exchange as a single value, for callers storing one state field.
pub enum ScramState {
    AwaitingClientFirst(ScramServer),
    AwaitingClientFinal(ScramServerWaitingFinal),
}

/// Outcome of [`ScramState::step`].
pub enum Step {
    /// Send the message (server-first) and feed the next client message to
    /// the state.
    Continue(ScramState, Vec<u8>),
    Success(ScramSuccess),
    Failure(ScramError),
}

impl ScramServer {
    /// Starts an exchange. `server_nonce` must come from a CSPRNG; it is
    /// sent base64-encoded.
    pub fn new(verifier: ScramVerifier, server_nonce: [u8; 18]) -> ScramServer {
        ScramServer::new_with_nonce_str(verifier, &STANDARD.encode(server_nonce))
    }

    /// Starts a fake exchange for an unknown user that fails with
    /// [`ScramError::InvalidProof`] exactly where a wrong password would.
    /// See [`mock_verifier`] for `user_salt_seed`.
    pub fn new_mock(user_salt_seed: &[u8], server_nonce: [u8; 18]) -> ScramServer {
        ScramServer {
            doomed: true,
            ..ScramServer::new(mock_verifier(user_salt_seed), server_nonce)
        }
    }

    /// `server_nonce` must be printable (RFC 5802 `printable`) and non-empty;
    /// `new` guarantees that, test vectors need arbitrary strings.
    pub(crate) fn new_with_nonce_str(verifier: ScramVerifier, server_nonce: &str) -> ScramServer {
        ScramServer {
            verifier,
            server_nonce: server_nonce.to_owned(),
            doomed: false,
        }
    }

    /// Handles client-first-message; returns the next state and the
    /// server-first-message.
    pub fn client_first(
        self,
        msg: &[u8],
    ) -> Result<(ScramServerWaitingFinal, Vec<u8>), ScramError> {
        check_message(msg)?;
        let (gs2_header, bare) = split_gs2_header(msg)?;

        let mut attrs = bare.split(|&b| b == b',');
        let user = attrs.next().unwrap_or_default();
        if user.starts_with(b"m=") {
            return Err(ScramError::Malformed("unsupported mandatory extension"));
        }
        // PostgreSQL ignores the name: the startup packet's user is used.
        if !user.starts_with(b"n=") {
            return Err(ScramError::Malformed("expected username attribute"));
        }
        let client_nonce = attrs
            .next()
            .and_then(|a| a.strip_prefix(b"r="))
            .ok_or(ScramError::Malformed("expected nonce attribute"))?;
        if client_nonce.is_empty() || !client_nonce.iter().copied().all(is_printable) {
            return Err(ScramError::Malformed("invalid client nonce"));
        }
        // Optional extensions are allowed and ignored, as PostgreSQL does.
        check_extensions(attrs, b"mnr")?;

        let mut nonce = client_nonce.to_vec();
        nonce.extend_from_slice(self.server_nonce.as_bytes());

        let mut server_first = b"r=".to_vec();
        server_first.extend_from_slice(&nonce);
        server_first.extend_from_slice(
            format!(
                ",s={},i={}",
                STANDARD.encode(&self.verifier.salt),
                self.verifier.iterations
            )
            .as_bytes(),
        );

        let mut auth_message_prefix = Vec::with_capacity(bare.len() + server_first.len() + 2);
        auth_message_prefix.extend_from_slice(bare);
        auth_message_prefix.push(b',');
        auth_message_prefix.extend_from_slice(&server_first);
        auth_message_prefix.push(b',');

        let next = ScramServerWaitingFinal {
            verifier: self.verifier,
            doomed: self.doomed,
            channel_binding: STANDARD.encode(gs2_header),
            nonce,
            auth_message_prefix,
        };
        Ok((next, server_first))
    }
}

impl ScramServerWaitingFinal {
    /// Handles client-final-message: checks it, then the proof.
    pub fn client_final(self, msg: &[u8]) -> Result<ScramSuccess, ScramError> {
        check_message(msg)?;
        // The proof is the last attribute and is not part of the AuthMessage.
        let comma = msg
            .iter()
            .rposition(|&b| b == b',')
            .ok_or(ScramError::Malformed("expected proof attribute"))?;
        let (without_proof, proof) = msg
            .split_at_checked(comma)
            .ok_or(ScramError::Malformed("expected proof attribute"))?;
        let proof = proof
            .strip_prefix(b",p=")
            .ok_or(ScramError::Malformed("proof must be the last attribute"))?;

        let mut attrs = without_proof.split(|&b| b == b',');
        let cbind = attrs
            .next()
            .and_then(|a| a.strip_prefix(b"c="))
            .ok_or(ScramError::Malformed("expected channel-binding attribute"))?;
        if cbind != self.channel_binding.as_bytes() {
            return Err(ScramError::Malformed("channel-binding data mismatch"));
        }
        let nonce = attrs
            .next()
            .and_then(|a| a.strip_prefix(b"r="))
            .ok_or(ScramError::Malformed("expected nonce attribute"))?;
        if nonce != self.nonce.as_slice() {
            return Err(ScramError::Malformed("nonce mismatch"));
        }
        check_extensions(attrs, b"crp")?;

        let proof = decode_proof(proof)?;

        let mut auth_message = self.auth_message_prefix.clone();
        auth_message.extend_from_slice(without_proof);

        let signature = Zeroizing::new(hmac_sha256(&self.verifier.stored_key, &[&auth_message]));
        let mut client_key = Zeroizing::new([0u8; 32]);
        for ((k, p), s) in client_key
            .iter_mut()
            .zip(proof.iter())
            .zip(signature.iter())
        {
            *k = p ^ s;
        }
        let matches = sha256(&*client_key).ct_eq(&self.verifier.stored_key);
        if !bool::from(matches & !Choice::from(u8::from(self.doomed))) {
            return Err(ScramError::InvalidProof);
        }

        let server_signature = hmac_sha256(&self.verifier.server_key, &[&auth_message]);
        let mut server_final = b"v=".to_vec();
        server_final.extend_from_slice(STANDARD.encode(server_signature).as_bytes());
        Ok(ScramSuccess {
            server_final,
            client_key: *client_key,
        })
    }
}

impl ScramState {
    /// Feeds one client message (SASLInitialResponse data, then SASLResponse).
    pub fn step(self, msg: &[u8]) -> Step {
        match self {
            ScramState::AwaitingClientFirst(server) => match server.client_first(msg) {
                Ok((next, reply)) => Step::Continue(ScramState::AwaitingClientFinal(next), reply),
                Err(e) => Step::Failure(e),
            },
            ScramState::AwaitingClientFinal(server) => match server.client_final(msg) {
                Ok(success) => Step::Success(success),
                Err(e) => Step::Failure(e),
            },
        }
    }
}

impl From<ScramServer> for ScramState {
    fn from(server: ScramServer) -> ScramState {
        ScramState::AwaitingClientFirst(server)
    }
}

/// A stand-in verifier for an unknown user, so the exchange looks like a
/// real one. Prefer [`ScramServer::new_mock`], which also makes the proof
/// check fail unconditionally.
///
/// The salt is stable per seed, as a real user's would be. The seed should
/// be a per-installation random secret followed by the user name (like
/// PostgreSQL's `mock_auth_nonce`); a bare user name lets anyone who reads
/// this code tell mock salts from real ones.
pub fn mock_verifier(user_salt_seed: &[u8]) -> ScramVerifier {
    let seed = Zeroizing::new(sha256(user_salt_seed));
    let derive = |label: &[u8]| {
        // 32-byte seed hash + label: never a 32-byte input, so the stored
        // key has no known ClientKey preimage.
        let mut input = Zeroizing::new(seed.to_vec());
        input.extend_from_slice(label);
        sha256(&input)
    };
    ScramVerifier {
        iterations: DEFAULT_ITERATIONS,
        salt: derive(b"pgsluice mock salt")
            .iter()
            .take(16)
            .copied()
            .collect(),
        stored_key: derive(b"pgsluice mock stored key"),
        server_key: derive(b"pgsluice mock server key"),
    }
}

fn check_message(msg: &[u8]) -> Result<(), ScramError> {
    if msg.len() > MAX_MESSAGE_LEN {
        return Err(ScramError::Malformed("message too long"));
    }
    // PostgreSQL treats messages as C strings; a NUL would be truncation.
    if msg.contains(&0) {
        return Err(ScramError::Malformed("NUL byte in message"));
    }
    Ok(())
}

/// Splits `gs2-header` (`n,,` or `y,,`) from client-first-message-bare.
fn split_gs2_header(msg: &[u8]) -> Result<(&[u8], &[u8]), ScramError> {
    // `y`: the client could bind but believes we can't, which is true while
    // we don't advertise SCRAM-SHA-256-PLUS. Once we do, `y` is a downgrade
    // and must be rejected.
    if let Some((header @ [b'n' | b'y', b',', b','], bare)) = msg.split_first_chunk::<3>() {
        return Ok((header, bare));
    }
    Err(match msg {
        [b'n' | b'y', b',', b'a', b'=', ..] => {
            ScramError::Malformed("authorization identity is not supported")
        }
        [b'p', b'=', ..] => {
            ScramError::Malformed("client requires channel binding, which the server did not offer")
        }
        [b'n' | b'y', ..] => ScramError::Malformed("malformed gs2 header"),
        _ => ScramError::Malformed("invalid channel-binding flag"),
    })
}

/// Optional extensions (`<letter>=<value>`) are ignored, but must be
/// well-formed and not repeat a standard attribute.
fn check_extensions<'a>(
    attrs: impl Iterator<Item = &'a [u8]>,
    reserved: &[u8],
) -> Result<(), ScramError> {
    for attr in attrs {
        match attr {
            [name, b'=', ..] if name.is_ascii_alphabetic() && !reserved.contains(name) => {}
            _ => return Err(ScramError::Malformed("malformed attribute")),
        }
    }
    Ok(())
}

fn decode_proof(b64: &[u8]) -> Result<Zeroizing<[u8; 32]>, ScramError> {
    // 32 bytes encode to 44 characters; reject others before decoding.
    if b64.len() != 44 {
        return Err(ScramError::Malformed("invalid proof length"));
    }
    let mut proof = Zeroizing::new([0u8; 33]);
    match STANDARD.decode_slice(b64, &mut proof[..]) {
        Ok(32) => {}
        Ok(_) => return Err(ScramError::Malformed("invalid proof length")),
        Err(_) => return Err(ScramError::Malformed("invalid proof encoding")),
    }
    let mut out = Zeroizing::new([0u8; 32]);
    for (o, p) in out.iter_mut().zip(proof.iter()) {
        *o = *p;
    }
    Ok(out)
}

/// RFC 5802 `printable`: %x21-7E except ','.
fn is_printable(b: u8) -> bool {
    (0x21..=0x7e).contains(&b) && b != b','
}

impl fmt::Debug for ScramServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramServer").finish_non_exhaustive()
    }
}

impl fmt::Debug for ScramServerWaitingFinal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramServerWaitingFinal")
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for ScramSuccess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramSuccess")
            .field("server_final", &String::from_utf8_lossy(&self.server_final))
            .field("client_key", &"<redacted>")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

    const NONCE: [u8; 18] = *b"server-nonce-18-by";

    fn verifier(password: &[u8]) -> ScramVerifier {
        ScramVerifier::from_password(password, b"0123456789abcdef", 4096)
    }

    /// ClientKey computed from first principles, independent of the server.
    fn expected_client_key(password: &[u8], v: &ScramVerifier) -> [u8; 32] {
        let salted = crate::auth::secret::hi(password, &v.salt, v.iterations);
        hmac_sha256(&salted, &[b"Client Key"])
    }

    fn malformed(r: Result<impl Sized, ScramError>) -> &'static str {
        match r {
            Err(ScramError::Malformed(m)) => m,
            Err(e) => panic!("expected Malformed, got {e:?}"),
            Ok(_) => panic!("expected Malformed, got Ok"),
        }
    }

    #[test]
    fn rfc7677_vector() {
        let salt = STANDARD.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let v = ScramVerifier::from_password(b"pencil", &salt, 4096);
        let want_key = expected_client_key(b"pencil", &v);
        let server = ScramServer::new_with_nonce_str(v, "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0");
        let (server, first) = server
            .client_first(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO")
            .unwrap();
        assert_eq!(
            first,
            b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
              s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
        );
        let ok = server
            .client_final(
                b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                  p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
            )
            .unwrap();
        assert_eq!(
            ok.server_final,
            b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
        assert_eq!(ok.client_key, want_key);
    }

    /// Runs postgres-protocol's client against our server.
    fn exchange(
        server: ScramServer,
        password: &[u8],
        binding: ChannelBinding,
    ) -> Result<ScramSuccess, ScramError> {
        let mut client = ScramSha256::new(password, binding);
        let (server, first) = server.client_first(client.message())?;
        client.update(&first).unwrap();
        let ok = server.client_final(client.message())?;
        client.finish(&ok.server_final).unwrap();
        Ok(ok)
    }

    #[test]
    fn postgres_client_right_password() {
        for binding in [ChannelBinding::unsupported(), ChannelBinding::unrequested()] {
            let v = verifier(b"s3cret");
            let want = expected_client_key(b"s3cret", &v);
            let ok = exchange(ScramServer::new(v, NONCE), b"s3cret", binding).unwrap();
            assert_eq!(ok.client_key, want);
            assert_eq!(ok.client_key, verifier_client_key_check(&ok.client_key));
        }
    }

    /// The key the server returns hashes to the StoredKey.
    fn verifier_client_key_check(key: &[u8; 32]) -> [u8; 32] {
        assert_eq!(sha256(key), verifier(b"s3cret").stored_key);
        *key
    }

    #[test]
    fn postgres_client_wrong_password() {
        let r = exchange(
            ScramServer::new(verifier(b"s3cret"), NONCE),
            b"s3cret!",
            ChannelBinding::unsupported(),
        );
        let e = r.unwrap_err();
        assert_eq!(e, ScramError::InvalidProof);
        assert_eq!(e.sqlstate(), "28P01");
    }

    #[test]
    fn postgres_client_requiring_binding_is_rejected() {
        let client = ScramSha256::new(b"x", ChannelBinding::tls_server_end_point(vec![1; 32]));
        let server = ScramServer::new(verifier(b"x"), NONCE);
        let m = malformed(server.client_first(client.message()));
        assert!(m.contains("channel binding"));
    }

    #[test]
    fn step_api_drives_exchange() {
        let mut client = ScramSha256::new(b"pw", ChannelBinding::unsupported());
        let state = ScramState::from(ScramServer::new(verifier(b"pw"), NONCE));
        let Step::Continue(state, first) = state.step(client.message()) else {
            panic!("expected Continue");
        };
        client.update(&first).unwrap();
        let Step::Success(ok) = state.step(client.message()) else {
            panic!("expected Success");
        };
        client.finish(&ok.server_final).unwrap();

        let state = ScramState::from(ScramServer::new(verifier(b"pw"), NONCE));
        assert!(matches!(
            state.step(b"bogus"),
            Step::Failure(ScramError::Malformed(_))
        ));
    }

    #[test]
    fn server_nonce_is_base64_of_injected_bytes() {
        let server = ScramServer::new(verifier(b"pw"), NONCE);
        let (_, first) = server.client_first(b"n,,n=,r=abc").unwrap();
        let want = format!("r=abc{},", STANDARD.encode(NONCE));
        assert!(first.starts_with(want.as_bytes()));
        assert!(first.ends_with(b",s=MDEyMzQ1Njc4OWFiY2RlZg==,i=4096"));
    }

    #[test]
    fn username_is_ignored() {
        for first in [
            &b"n,,n=,r=abc"[..],
            b"n,,n=someone=2Celse,r=abc",
            b"y,,n=\xff\xfe,r=abc",
            b"n,,n=u,r=abc,x=ext,y=",
        ] {
            let server = ScramServer::new(verifier(b"pw"), NONCE);
            assert!(server.client_first(first).is_ok(), "{first:?}");
        }
    }

    #[test]
    fn mock_exchange_fails_like_wrong_password() {
        let v = mock_verifier(b"install-secret\0alice");
        assert_eq!(v.iterations, 4096);
        assert_eq!(v.salt.len(), 16);
        assert_eq!(v.salt, mock_verifier(b"install-secret\0alice").salt);
        assert_ne!(v.salt, mock_verifier(b"install-secret\0bob").salt);
        assert_ne!(v.stored_key, v.server_key);
        // The real password for the mock would be unknowable anyway; any
        // password must fail the same way a wrong one does.
        let r = exchange(
            ScramServer::new_mock(b"install-secret\0alice", NONCE),
            b"anything",
            ChannelBinding::unsupported(),
        );
        assert_eq!(r.unwrap_err(), ScramError::InvalidProof);
    }

    #[test]
    fn doomed_exchange_fails_even_with_right_proof() {
        let server = ScramServer {
            doomed: true,
            ..ScramServer::new(verifier(b"pw"), NONCE)
        };
        let r = exchange(server, b"pw", ChannelBinding::unsupported());
        assert_eq!(r.unwrap_err(), ScramError::InvalidProof);
    }

    #[test]
    fn client_first_rejections() {
        let long = {
            let mut m = b"n,,n=,r=".to_vec();
            m.resize(MAX_MESSAGE_LEN + 1, b'a');
            m
        };
        let cases: &[(&[u8], &str)] = &[
            (b"", "flag"),
            (b"x,,n=,r=abc", "flag"),
            (b"p=tls-server-end-point,,n=,r=abc", "channel binding"),
            (b"n,a=admin,n=,r=abc", "authorization"),
            (b"n,n=,r=abc", "gs2"),
            (b"n", "gs2"),
            (b"n,,", "username"),
            (b"n,,m=ext,n=,r=abc", "extension"),
            (b"n,,r=abc", "username"),
            (b"n,,n=", "nonce"),
            (b"n,,n=,x=abc", "nonce"),
            (b"n,,n=,r=", "nonce"),
            (b"n,,n=,r=ab c", "nonce"),
            (b"n,,n=,r=ab\x7f", "nonce"),
            (b"n,,n=,r=ab\xc3\xa9", "nonce"),
            (b"n,,n=,r=abc\0", "NUL"),
            (b"n,,n=,r=abc,", "attribute"),
            (b"n,,n=,r=abc,r=def", "attribute"),
            (b"n,,n=,r=abc,1=x", "attribute"),
            (b"n,,n=,r=abc,xx", "attribute"),
            (&long, "too long"),
        ];
        for (msg, want) in cases {
            let server = ScramServer::new(verifier(b"pw"), NONCE);
            let got = malformed(server.client_first(msg));
            assert!(got.contains(want), "{msg:?}: {got}");
        }
        // Exactly at the limit is fine.
        let mut max = b"n,,n=,r=".to_vec();
        max.resize(MAX_MESSAGE_LEN, b'a');
        assert!(ScramServer::new(verifier(b"pw"), NONCE)
            .client_first(&max)
            .is_ok());
    }

    /// A server after `n,,n=,r=cnonce` plus the exact valid client-final.
    fn after_first(gs2: &str) -> (ScramServerWaitingFinal, String, String) {
        let v = verifier(b"pw");
        let key = expected_client_key(b"pw", &v);
        let bare = "n=,r=cnonce";
        let (server, first) = ScramServer::new(v, NONCE)
            .client_first(format!("{gs2}{bare}").as_bytes())
            .unwrap();
        let nonce = format!("cnonce{}", STANDARD.encode(NONCE));
        let without_proof = format!("c={},r={nonce}", STANDARD.encode(gs2));
        let auth = format!(
            "{bare},{},{without_proof}",
            String::from_utf8(first).unwrap()
        );
        let sig = hmac_sha256(&sha256(&key), &[auth.as_bytes()]);
        let proof: Vec<u8> = key.iter().zip(sig).map(|(k, s)| k ^ s).collect();
        let final_msg = format!("{without_proof},p={}", STANDARD.encode(proof));
        (server, final_msg, nonce)
    }

    #[test]
    fn hand_built_final_succeeds() {
        for gs2 in ["n,,", "y,,"] {
            let (server, msg, _) = after_first(gs2);
            assert!(server.client_final(msg.as_bytes()).is_ok(), "{gs2}");
        }
    }

    #[test]
    fn client_final_rejections() {
        let (_, good, nonce) = after_first("n,,");
        let proof = good.rsplit_once(",p=").unwrap().1.to_owned();
        let short_proof = STANDARD.encode([7u8; 31]);
        let long_proof = STANDARD.encode([7u8; 33]);
        let cases: Vec<(String, &str)> = vec![
            (String::new(), "proof"),
            ("c=biws".into(), "proof"),
            (format!("c=biws,r={nonce}"), "last"),
            (format!("c=biws,r={nonce},p={proof},x=1"), "last"),
            (format!("r={nonce},p={proof}"), "channel-binding attribute"),
            (
                format!("c=eSws,r={nonce},p={proof}"),
                "channel-binding data",
            ),
            (
                format!("c=biws=,r={nonce},p={proof}"),
                "channel-binding data",
            ),
            (format!("c=,r={nonce},p={proof}"), "channel-binding data"),
            (format!("c=biws,p={proof}"), "nonce attribute"),
            (format!("c=biws,r=cnonce,p={proof}"), "nonce mismatch"),
            (format!("c=biws,r={nonce}x,p={proof}"), "nonce mismatch"),
            (format!("c=biws,r={nonce},p=x,p={proof}"), "attribute"),
            (format!("c=biws,r={nonce},,p={proof}"), "attribute"),
            (format!("c=biws,r={nonce},p={short_proof}"), "proof length"),
            (format!("c=biws,r={nonce},p={long_proof}"), "proof length"),
            (format!("c=biws,r={nonce},p="), "proof length"),
            (
                format!("c=biws,r={nonce},p={}", "!".repeat(44)),
                "proof encoding",
            ),
            (
                format!("c=biws,r={nonce},p={}", "A".repeat(44)),
                "proof length",
            ),
            (format!("c=biws,r={nonce},p={proof}\0"), "NUL"),
            (format!("{good}{}", "a".repeat(MAX_MESSAGE_LEN)), "too long"),
        ];
        for (msg, want) in cases {
            let (server, _, _) = after_first("n,,");
            let got = malformed(server.client_final(msg.as_bytes()));
            assert!(got.contains(want), "{msg:?}: {got}");
        }
        // y,, must be echoed as eSws, not biws.
        let (server, _, nonce) = after_first("y,,");
        let msg = format!("c=biws,r={nonce},p={proof}");
        assert!(malformed(server.client_final(msg.as_bytes())).contains("channel-binding"));
        // A well-formed but wrong proof is InvalidProof, not Malformed.
        let (server, _, nonce) = after_first("n,,");
        let msg = format!("c=biws,r={nonce},p={}", STANDARD.encode([0u8; 32]));
        let e = server.client_final(msg.as_bytes()).unwrap_err();
        assert_eq!(e, ScramError::InvalidProof);
        assert_eq!(ScramError::Malformed("x").sqlstate(), "08P01");
    }

    #[test]
    fn extensions_in_final_are_ignored() {
        let (server, good, _) = after_first("n,,");
        // Extensions are part of the AuthMessage, so the proof must be
        // recomputed; a stale proof fails as InvalidProof, not Malformed.
        let (head, proof) = good.rsplit_once(",p=").unwrap();
        let msg = format!("{head},x=ext,p={proof}");
        assert_eq!(
            server.client_final(msg.as_bytes()).unwrap_err(),
            ScramError::InvalidProof
        );
    }

    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn bytes(&mut self, max_len: u64, alphabet: &[u8]) -> Vec<u8> {
            let len = self.next() % max_len;
            (0..len)
                .map(|_| {
                    let r = self.next();
                    if alphabet.is_empty() {
                        r as u8
                    } else {
                        alphabet[(r % alphabet.len() as u64) as usize]
                    }
                })
                .collect()
        }
    }

    #[test]
    fn garbage_never_panics() {
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let (_, good_final, _) = after_first("n,,");
        for i in 0..600 {
            // Mix raw bytes, protocol-ish characters and mutated real messages.
            let mut msg = match i % 3 {
                0 => rng.bytes(200, &[]),
                1 => rng.bytes(80, b"nyrpcsima=,,,,biws\0+/AZ"),
                _ => good_final.clone().into_bytes(),
            };
            if i % 3 == 2 {
                for _ in 0..(rng.next() % 4) {
                    let pos = (rng.next() % msg.len() as u64) as usize;
                    msg[pos] = rng.next() as u8;
                }
                msg.truncate((rng.next() % (msg.len() as u64 + 1)) as usize);
            }
            let _ = ScramServer::new(verifier(b"pw"), NONCE).client_first(&msg);
            let (server, _, _) = after_first("n,,");
            assert!(server.client_final(&msg).is_err() || msg == good_final.as_bytes());
        }
        // Every prefix of valid messages.
        let first = b"n,,n=user,r=cnonce,x=1";
        for len in 0..=first.len() {
            let _ = ScramServer::new(verifier(b"pw"), NONCE).client_first(&first[..len]);
        }
        for len in 0..good_final.len() {
            let (server, _, _) = after_first("n,,");
            assert!(server.client_final(&good_final.as_bytes()[..len]).is_err());
        }
    }

    #[test]
    fn debug_is_redacted() {
        let server = ScramServer::new(verifier(b"pw"), NONCE);
        assert!(!format!("{server:?}").contains("key"));
        let (server, msg, _) = after_first("n,,");
        let ok = server.client_final(msg.as_bytes()).unwrap();
        let d = format!("{ok:?}");
        assert!(d.contains("<redacted>"));
        assert!(!d.contains(&format!("{:?}", ok.client_key)));
    }
}
