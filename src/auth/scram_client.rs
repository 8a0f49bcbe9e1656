//! Sans-IO client side of SCRAM-SHA-256, for logging in to PostgreSQL. Besides a password it can
//! log in with the keys recovered from a client's own SCRAM proof (pass-through: the pooler never
//! holds the plain text), and it binds to the server's TLS certificate when PostgreSQL offers
//! SCRAM-SHA-256-PLUS.

use crate::auth::scram::{ScramError, TLS_SERVER_END_POINT};
use crate::auth::secret::{hi, hmac_sha256, sha256};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// What the client proves itself with.
pub enum ClientSecret {
    /// The password: the keys are derived with the salt and iteration count the server sends.
    Password(Zeroizing<String>),
    /// ClientKey and ServerKey of a verifier with this salt and iteration count. The server's own
    /// verifier must be the same one (same salt), or the login cannot succeed.
    Keys {
        client_key: Zeroizing<[u8; 32]>,
        server_key: Zeroizing<[u8; 32]>,
        salt: Vec<u8>,
        iterations: u32,
    },
}

/// Why a login with SCRAM could not go on; the pooler's own failure, not the server's.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScramClientError {
    #[error("malformed SCRAM message from the server: {0}")]
    Malformed(&'static str),
    #[error("the server's SCRAM secret for this user is not the one pgsluice holds (salt or iteration count differ)")]
    OtherVerifier,
    #[error("the server's SCRAM signature is wrong: it does not know the user's secret")]
    BadServerSignature,
}

impl From<ScramError> for ScramClientError {
    fn from(_: ScramError) -> Self {
        ScramClientError::Malformed("invalid message")
    }
}

/// A login in progress.
pub struct ScramClient {
    secret: ClientSecret,
    gs2_header: Vec<u8>,
    /// The gs2 header followed by the end-point hash when binding.
    cbind_input: Vec<u8>,
    client_first_bare: String,
    nonce: String,
    /// HMAC(ServerKey, AuthMessage), checked against server-final.
    expected_server_signature: Option<[u8; 32]>,
}

/// The mechanism to pick from those the server offered, and how to bind.
pub fn choose(offered: &[&[u8]], tls: bool, end_point: Option<&[u8]>) -> Option<Mechanism> {
    let plus = offered.contains(&&b"SCRAM-SHA-256-PLUS"[..]);
    let plain = offered.contains(&&b"SCRAM-SHA-256"[..]);
    match (plus, end_point) {
        (true, Some(hash)) if tls => Some(Mechanism::Plus(hash.to_vec())),
        _ if plain => Some(Mechanism::Plain {
            // `y`: we could bind over TLS, but the server did not offer it.
            could_bind: tls && end_point.is_some(),
        }),
        _ => None,
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mechanism {
    Plain { could_bind: bool },
    Plus(Vec<u8>),
}

impl Mechanism {
    pub fn name(&self) -> &'static str {
        match self {
            Mechanism::Plain { .. } => "SCRAM-SHA-256",
            Mechanism::Plus(_) => "SCRAM-SHA-256-PLUS",
        }
    }
}

impl ScramClient {
    /// Starts a login; `nonce` must come from a CSPRNG.
    pub fn new(secret: ClientSecret, mechanism: &Mechanism, nonce: [u8; 18]) -> ScramClient {
        let (gs2_header, binding): (Vec<u8>, &[u8]) = match mechanism {
            Mechanism::Plain { could_bind: false } => (b"n,,".to_vec(), b""),
            Mechanism::Plain { could_bind: true } => (b"y,,".to_vec(), b""),
            Mechanism::Plus(hash) => {
                let mut h = b"p=".to_vec();
                h.extend_from_slice(TLS_SERVER_END_POINT);
                h.extend_from_slice(b",,");
                (h, hash.as_slice())
            }
        };
        let mut cbind_input = gs2_header.clone();
        cbind_input.extend_from_slice(binding);
        let nonce = STANDARD.encode(nonce);
        ScramClient {
            secret,
            gs2_header,
            cbind_input,
            // PostgreSQL takes the user from the startup packet; libpq sends an empty name too.
            client_first_bare: format!("n=,r={nonce}"),
            nonce,
            expected_server_signature: None,
        }
    }

    /// The SASLInitialResponse data.
    pub fn client_first(&self) -> Vec<u8> {
        let mut m = self.gs2_header.clone();
        m.extend_from_slice(self.client_first_bare.as_bytes());
        m
    }

    /// The salt and iteration count from server-first, for a caller that derives the password's
    /// keys off the async threads before [`ScramClient::client_final`].
    pub fn server_first_params(msg: &[u8]) -> Result<(Vec<u8>, u32), ScramClientError> {
        let p = parse_server_first(msg)?;
        Ok((p.salt, p.iterations))
    }

    /// Answers server-first with client-final. For a password, `salted` is Hi(password, salt, i)
    /// (see [`salted_password`]); for keys it is not used.
    pub fn client_final(
        &mut self,
        server_first: &[u8],
        salted: Option<&[u8; 32]>,
    ) -> Result<Vec<u8>, ScramClientError> {
        let p = parse_server_first(server_first)?;
        if !p.nonce.starts_with(self.nonce.as_bytes()) || p.nonce.len() == self.nonce.len() {
            return Err(ScramClientError::Malformed(
                "server nonce does not extend ours",
            ));
        }
        let (client_key, server_key) = match &self.secret {
            ClientSecret::Password(_) => {
                let salted = salted.ok_or(ScramClientError::Malformed("no salted password"))?;
                (
                    Zeroizing::new(hmac_sha256(salted, &[b"Client Key"])),
                    Zeroizing::new(hmac_sha256(salted, &[b"Server Key"])),
                )
            }
            ClientSecret::Keys {
                client_key,
                server_key,
                salt,
                iterations,
            } => {
                if *salt != p.salt || *iterations != p.iterations {
                    return Err(ScramClientError::OtherVerifier);
                }
                (client_key.clone(), server_key.clone())
            }
        };
        let mut without_proof = b"c=".to_vec();
        without_proof.extend_from_slice(STANDARD.encode(&self.cbind_input).as_bytes());
        without_proof.extend_from_slice(b",r=");
        without_proof.extend_from_slice(p.nonce);
        let mut auth_message = self.client_first_bare.as_bytes().to_vec();
        auth_message.push(b',');
        auth_message.extend_from_slice(server_first);
        auth_message.push(b',');
        auth_message.extend_from_slice(&without_proof);
        let stored_key = sha256(&*client_key);
        let signature = Zeroizing::new(hmac_sha256(&stored_key, &[&auth_message]));
        let mut proof = [0u8; 32];
        for ((o, k), s) in proof
            .iter_mut()
            .zip(client_key.iter())
            .zip(signature.iter())
        {
            *o = k ^ s;
        }
        self.expected_server_signature = Some(hmac_sha256(&*server_key, &[&auth_message]));
        let mut out = without_proof;
        out.extend_from_slice(b",p=");
        out.extend_from_slice(STANDARD.encode(proof).as_bytes());
        Ok(out)
    }

    /// Checks server-final: the server proves it knows the verifier.
    pub fn server_final(&self, msg: &[u8]) -> Result<(), ScramClientError> {
        let expected = self
            .expected_server_signature
            .ok_or(ScramClientError::Malformed(
                "server-final before server-first",
            ))?;
        if msg.starts_with(b"e=") {
            return Err(ScramClientError::BadServerSignature);
        }
        let v = msg
            .split(|&b| b == b',')
            .next()
            .and_then(|a| a.strip_prefix(b"v="))
            .ok_or(ScramClientError::Malformed("expected verifier attribute"))?;
        let got = STANDARD
            .decode(v)
            .map_err(|_| ScramClientError::Malformed("invalid verifier encoding"))?;
        if got.len() == 32 && bool::from(got.as_slice().ct_eq(&expected)) {
            Ok(())
        } else {
            Err(ScramClientError::BadServerSignature)
        }
    }
}

/// Hi(password, salt, i): the slow part of a password login; run it off the async threads.
pub fn salted_password(password: &[u8], salt: &[u8], iterations: u32) -> Zeroizing<[u8; 32]> {
    Zeroizing::new(hi(password, salt, iterations))
}

struct ServerFirst<'a> {
    nonce: &'a [u8],
    salt: Vec<u8>,
    iterations: u32,
}

/// Most iterations accepted from a server: PostgreSQL's default is 4096; far more would let a
/// hostile server burn the pooler's CPU.
const MAX_ITERATIONS: u32 = 1_000_000;

fn parse_server_first(msg: &[u8]) -> Result<ServerFirst<'_>, ScramClientError> {
    let mut attrs = msg.split(|&b| b == b',');
    let mut take = |prefix: &'static [u8], what: &'static str| {
        attrs
            .next()
            .and_then(|a| a.strip_prefix(prefix))
            .ok_or(ScramClientError::Malformed(what))
    };
    let nonce = take(b"r=", "expected nonce attribute")?;
    let salt = take(b"s=", "expected salt attribute")?;
    let iterations = take(b"i=", "expected iteration count")?;
    let salt = STANDARD
        .decode(salt)
        .map_err(|_| ScramClientError::Malformed("invalid salt encoding"))?;
    let iterations = std::str::from_utf8(iterations)
        .ok()
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|s| s.parse::<u32>().ok())
        .filter(|&i| (1..=MAX_ITERATIONS).contains(&i))
        .ok_or(ScramClientError::Malformed("invalid iteration count"))?;
    Ok(ServerFirst {
        nonce,
        salt,
        iterations,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::auth::scram::ScramServer;
    use crate::auth::secret::ScramVerifier;

    fn run(secret: ClientSecret, verifier: ScramVerifier, end_point: Option<Vec<u8>>) {
        let mech = match &end_point {
            Some(h) => Mechanism::Plus(h.clone()),
            None => Mechanism::Plain { could_bind: false },
        };
        let mut client = ScramClient::new(secret, &mech, [7; 18]);
        let mut server = ScramServer::new(verifier.clone(), [9; 18]);
        if end_point.is_some() {
            server = server.offered_channel_binding(end_point);
        }
        let (waiting, first) = server.client_first(&client.client_first()).unwrap();
        let (salt, iterations) = ScramClient::server_first_params(&first).unwrap();
        let salted = salted_password(b"pw", &salt, iterations);
        let fin = client.client_final(&first, Some(&salted)).unwrap();
        let ok = waiting.client_final(&fin).unwrap();
        client.server_final(&ok.server_final).unwrap();
    }

    #[test]
    fn logs_in_against_our_own_server_with_a_password_and_with_keys() {
        let v = ScramVerifier::from_password(b"pw", b"salty salt", 4096);
        run(
            ClientSecret::Password(Zeroizing::new("pw".into())),
            v.clone(),
            None,
        );
        run(
            ClientSecret::Password(Zeroizing::new("pw".into())),
            v.clone(),
            Some(vec![1, 2, 3]),
        );
        // Keys recovered from a client's proof, as pass-through gets them.
        let salted = hi(b"pw", b"salty salt", 4096);
        run(
            ClientSecret::Keys {
                client_key: Zeroizing::new(hmac_sha256(&salted, &[b"Client Key"])),
                server_key: Zeroizing::new(v.server_key),
                salt: v.salt.clone(),
                iterations: v.iterations,
            },
            v,
            None,
        );
    }

    #[test]
    fn keys_for_another_verifier_are_refused_before_any_proof_is_sent() {
        let ours = ScramVerifier::from_password(b"pw", b"salt one", 4096);
        let mut client = ScramClient::new(
            ClientSecret::Keys {
                client_key: Zeroizing::new([1; 32]),
                server_key: Zeroizing::new(ours.server_key),
                salt: ours.salt.clone(),
                iterations: 4096,
            },
            &Mechanism::Plain { could_bind: false },
            [7; 18],
        );
        let theirs = ScramVerifier::from_password(b"pw", b"salt two", 4096);
        let (_, first) = ScramServer::new(theirs, [9; 18])
            .client_first(&client.client_first())
            .unwrap();
        assert_eq!(
            client.client_final(&first, None),
            Err(ScramClientError::OtherVerifier)
        );
    }

    #[test]
    fn a_server_that_does_not_know_the_secret_is_caught() {
        let v = ScramVerifier::from_password(b"pw", b"s", 4096);
        let mut client = ScramClient::new(
            ClientSecret::Password(Zeroizing::new("pw".into())),
            &Mechanism::Plain { could_bind: false },
            [7; 18],
        );
        let (_, first) = ScramServer::new(v, [9; 18])
            .client_first(&client.client_first())
            .unwrap();
        let salted = salted_password(b"pw", b"s", 4096);
        client.client_final(&first, Some(&salted)).unwrap();
        let forged = format!("v={}", STANDARD.encode([0u8; 32]));
        assert_eq!(
            client.server_final(forged.as_bytes()),
            Err(ScramClientError::BadServerSignature)
        );
        assert!(ScramClient::server_first_params(b"r=x,s=AAAA,i=99999999999").is_err());
        assert!(ScramClient::server_first_params(b"garbage").is_err());
    }

    #[test]
    fn plus_is_chosen_only_over_tls_with_a_hash() {
        let offered: [&[u8]; 2] = [b"SCRAM-SHA-256-PLUS", b"SCRAM-SHA-256"];
        assert_eq!(
            choose(&offered, true, Some(b"h")),
            Some(Mechanism::Plus(b"h".to_vec()))
        );
        assert_eq!(
            choose(&offered, true, None),
            Some(Mechanism::Plain { could_bind: false })
        );
        assert_eq!(
            choose(&[b"SCRAM-SHA-256"], true, Some(b"h")),
            Some(Mechanism::Plain { could_bind: true })
        );
        assert_eq!(choose(&[b"OTHER"], false, None), None);
    }
}
