//! Sans-IO server side of SCRAM-SHA-256 (RFC 5802, RFC 7677) as PostgreSQL
//! speaks it: the username in client-first is ignored and there is no authzid.
//! On TLS connections SCRAM-SHA-256-PLUS is offered too, with
//! `tls-server-end-point` channel binding (RFC 5929), as PostgreSQL 11+ does.
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

/// What the server offered and the client chose, which decides the gs2 header
/// a client may send and the `c=` it must echo.
#[derive(Clone)]
enum Binding {
    /// Only SCRAM-SHA-256 was offered (no TLS).
    NotOffered,
    /// SCRAM-SHA-256-PLUS was offered but the client chose SCRAM-SHA-256.
    Declined,
    /// The client chose SCRAM-SHA-256-PLUS; the end-point hash it must bind.
    Selected(Vec<u8>),
}

/// The channel binding type PostgreSQL implements.
pub const TLS_SERVER_END_POINT: &[u8] = b"tls-server-end-point";

/// Server waiting for client-first-message.
pub struct ScramServer {
    verifier: ScramVerifier,
    binding: Binding,
    server_nonce: String,
    /// Fail at the proof check whatever the client sends: mock exchanges for
    /// unknown users must not be passable even if someone finds a proof.
    doomed: bool,
}

/// Server waiting for client-final-message.
pub struct ScramServerWaitingFinal {
    verifier: ScramVerifier,
    doomed: bool,
    /// Expected `c=` value: base64 of the gs2 header and any binding data.
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
            binding: Binding::NotOffered,
            server_nonce: server_nonce.to_owned(),
            doomed: false,
        }
    }

    /// Records that SCRAM-SHA-256-PLUS was offered next to SCRAM-SHA-256, and
    /// what the client picked: `Some(end_point)` (our certificate's hash) when
    /// it picked PLUS, `None` when it picked plain SCRAM-SHA-256, which then
    /// may not claim (`y`) that the server cannot bind: that is a downgrade.
    pub fn offered_channel_binding(mut self, selected: Option<Vec<u8>>) -> ScramServer {
        self.binding = match selected {
            Some(end_point) => Binding::Selected(end_point),
            None => Binding::Declined,
        };
        self
    }

    /// Handles client-first-message; returns the next state and the
    /// server-first-message.
    pub fn client_first(
        self,
        msg: &[u8],
    ) -> Result<(ScramServerWaitingFinal, Vec<u8>), ScramError> {
        check_message(msg)?;
        let (gs2_header, flag, bare) = split_gs2_header(msg)?;
        let mut expected_cbind = gs2_header.to_vec();
        match (&self.binding, flag) {
            (Binding::Selected(end_point), Flag::Binds(TLS_SERVER_END_POINT)) => {
                expected_cbind.extend_from_slice(end_point)
            }
            (Binding::Selected(_), Flag::Binds(_)) => {
                return Err(ScramError::Malformed(
                    "unsupported SCRAM channel-binding type",
                ))
            }
            (Binding::Selected(_), _) => {
                return Err(ScramError::Malformed(
                    "client selected SCRAM-SHA-256-PLUS but sent no channel binding",
                ))
            }
            (_, Flag::Binds(_)) => {
                return Err(ScramError::Malformed(
                    "client requires channel binding, which the server did not offer",
                ))
            }
            // The client believes we cannot bind, yet we offered it: someone stripped the offer.
            (Binding::Declined, Flag::CouldBind) => {
                return Err(ScramError::Malformed(
                    "SCRAM channel binding negotiation error",
                ))
            }
            (_, Flag::No | Flag::CouldBind) => {}
        }

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
            channel_binding: STANDARD.encode(expected_cbind),
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

/// The gs2 channel-binding flag of client-first.
enum Flag<'a> {
    /// `n`: the client does not bind.
    No,
    /// `y`: the client could bind but believes the server cannot.
    CouldBind,
    /// `p=<type>`: the client binds with this type.
    Binds(&'a [u8]),
}

/// Splits `gs2-header` (`n,,`, `y,,` or `p=<type>,,`) from
/// client-first-message-bare.
fn split_gs2_header(msg: &[u8]) -> Result<(&[u8], Flag<'_>, &[u8]), ScramError> {
    // Without a comma the whole message is taken as the flag, to name what is wrong with it.
    let comma = msg.iter().position(|&b| b == b',').unwrap_or(msg.len());
    let (flag, rest) = msg
        .split_at_checked(comma)
        .ok_or(ScramError::Malformed("malformed gs2 header"))?;
    let flag = match flag {
        b"n" => Flag::No,
        b"y" => Flag::CouldBind,
        [b'p', b'=', name @ ..] if !name.is_empty() => Flag::Binds(name),
        [b'n' | b'y', ..] => return Err(ScramError::Malformed("malformed gs2 header")),
        _ => return Err(ScramError::Malformed("invalid channel-binding flag")),
    };
    // rest is ",<authzid>,<bare>"; PostgreSQL takes no authzid.
    match rest {
        [b',', b'a', b'=', ..] => Err(ScramError::Malformed(
            "authorization identity is not supported",
        )),
        [b',', b',', bare @ ..] => {
            let header = msg
                .get(..comma + 2)
                .ok_or(ScramError::Malformed("malformed gs2 header"))?;
            Ok((header, flag, bare))
        }
        _ => Err(ScramError::Malformed("malformed gs2 header")),
    }
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
mod tests;
