#![no_main]
//! The client side of SCRAM-SHA-256 (pgsluice logging into PostgreSQL): server-first then
//! server-final, both from arbitrary bytes, split at the first NUL.
use libfuzzer_sys::fuzz_target;
use pgsluice::auth::scram_client::{ClientSecret, Mechanism, ScramClient};
use zeroize::Zeroizing;

fuzz_target!(|data: &[u8]| {
    let (first, last) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let _ = ScramClient::server_first_params(first);
    // Keys rather than a password: no PBKDF2 per input, the same parsing.
    let secret = ClientSecret::Keys {
        client_key: Zeroizing::new([1; 32]),
        server_key: Zeroizing::new([2; 32]),
        salt: b"saltsaltsaltsalt".to_vec(),
        iterations: 4096,
    };
    let mechanism = Mechanism::Plus(vec![3; 32]);
    let mut client = ScramClient::new(secret, &mechanism, [7; 18]);
    let _ = client.client_first();
    if client.client_final(first, None).is_ok() {
        let _ = client.server_final(last);
    }
});
