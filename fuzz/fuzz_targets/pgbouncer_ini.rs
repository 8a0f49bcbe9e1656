#![no_main]
//! The pgbouncer.ini reader (without includes, which need files).
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = pgsluice::config::ini::parse_str(text, std::path::Path::new("fuzz.ini"));
    }
});
