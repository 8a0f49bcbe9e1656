#![no_main]
//! Startup packets (SSLRequest, CancelRequest, a peer's signed cancel, StartupMessage) from arbitrary bytes, fed in two
//! pieces so that the "need more bytes" path is exercised too.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let split = data.first().map_or(0, |b| *b as usize).min(data.len());
    let mut buf = bytes::BytesMut::from(&data[..split]);
    for piece in [&data[split..], &[][..]] {
        loop {
            match pgsluice::proto::startup::parse(&mut buf) {
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => break,
            }
        }
        buf.extend_from_slice(piece);
    }
});
