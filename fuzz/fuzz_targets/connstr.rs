#![no_main]
//! The connection string of a [databases] entry.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = pgsluice::config::connstr::parse(text);
    }
});
