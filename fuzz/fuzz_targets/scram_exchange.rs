#![no_main]
//! The server side of SCRAM-SHA-256: client-first then client-final, both from arbitrary bytes.
use libfuzzer_sys::fuzz_target;
use pgsluice::auth::scram::ScramServer;
use pgsluice::auth::secret::ScramVerifier;
use std::sync::OnceLock;

fuzz_target!(|data: &[u8]| {
    static VERIFIER: OnceLock<ScramVerifier> = OnceLock::new();
    let v =
        VERIFIER.get_or_init(|| ScramVerifier::from_password(b"pencil", b"saltsaltsaltsalt", 16));
    let (first, last) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    if let Ok((waiting, _server_first)) = ScramServer::new(v.clone(), [7; 18]).client_first(first) {
        let _ = waiting.client_final(last);
    }
});
