#![no_main]
//! The auth_hba_file (pg_hba.conf subset) parser and its first-match lookup.
use libfuzzer_sys::fuzz_target;
use pgsluice::auth::hba::{HbaRules, Transport};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let Ok(rules) = HbaRules::parse(&text) else {
        return;
    };
    let v4 = Ipv4Addr::new(10, 1, 2, 3);
    let tcp = [
        (IpAddr::V4(v4), false),
        (IpAddr::V4(v4), true),
        (IpAddr::V6(v4.to_ipv6_mapped()), false),
        (IpAddr::V6(Ipv6Addr::LOCALHOST), true),
    ];
    let transports = tcp.map(|(addr, tls)| Transport::Tcp { addr, tls });
    for t in [Transport::Unix].into_iter().chain(transports) {
        for (db, user) in [("pgbouncer", "pgbouncer"), ("app", "alice"), ("all", "all")] {
            if let Some(m) = rules.lookup(t, db, user) {
                // A match names a real, 1-based line of the input.
                assert!(m.line >= 1 && m.line <= text.lines().count());
            }
        }
    }
});
