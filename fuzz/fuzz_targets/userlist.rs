#![no_main]
//! The auth_file (userlist.txt) reader and the secret classifier.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(entries) = pgsluice::config::userlist::parse(text) {
            for e in entries {
                let _ = pgsluice::auth::secret::Secret::parse(&e.secret);
            }
        }
    }
});
