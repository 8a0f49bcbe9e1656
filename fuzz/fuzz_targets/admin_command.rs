#![no_main]
//! A query sent to the admin console: PgBouncer's command grammar.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(command) = pgsluice::admin::command::parse(text) {
            let _ = command.read_only();
        }
    }
});
