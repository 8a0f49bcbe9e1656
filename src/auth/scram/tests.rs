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

mod psql_transcript;

#[test]
fn plus_with_our_end_point_succeeds() {
    let hash = vec![0xab; 32];
    let v = verifier(b"s3cret");
    let want = expected_client_key(b"s3cret", &v);
    let server = ScramServer::new(v, NONCE).offered_channel_binding(Some(hash.clone()));
    let ok = exchange(
        server,
        b"s3cret",
        ChannelBinding::tls_server_end_point(hash),
    )
    .unwrap();
    assert_eq!(ok.client_key, want);
}

#[test]
fn plus_with_another_certificates_hash_fails() {
    // A man in the middle terminates TLS with its own certificate: the hashes differ.
    let server =
        ScramServer::new(verifier(b"s3cret"), NONCE).offered_channel_binding(Some(vec![1; 32]));
    let r = exchange(
        server,
        b"s3cret",
        ChannelBinding::tls_server_end_point(vec![2; 32]),
    );
    assert!(
        r.is_err(),
        "binding data of another certificate was accepted"
    );
}

#[test]
fn plain_scram_after_plus_was_offered_is_accepted_unless_downgraded() {
    // `n`: the client cannot bind (no TLS support for it); fine.
    let server = ScramServer::new(verifier(b"pw"), NONCE).offered_channel_binding(None);
    assert!(exchange(server, b"pw", ChannelBinding::unsupported()).is_ok());
    // `y`: the client could bind and thinks we cannot, yet we offered PLUS: the offer was stripped.
    let server = ScramServer::new(verifier(b"pw"), NONCE).offered_channel_binding(None);
    let m = malformed(server.client_first(b"y,,n=,r=abcdef"));
    assert!(m.contains("negotiation"), "{m}");
}

#[test]
fn plus_selected_but_no_binding_sent_is_rejected() {
    let server =
        ScramServer::new(verifier(b"pw"), NONCE).offered_channel_binding(Some(vec![1; 32]));
    let m = malformed(server.client_first(b"n,,n=,r=abcdef"));
    assert!(m.contains("no channel binding"), "{m}");
    let server =
        ScramServer::new(verifier(b"pw"), NONCE).offered_channel_binding(Some(vec![1; 32]));
    let m = malformed(server.client_first(b"p=tls-unique,,n=,r=abcdef"));
    assert!(m.contains("unsupported"), "{m}");
}
