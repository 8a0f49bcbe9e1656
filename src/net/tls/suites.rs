//! PgBouncer's `*_tls_protocols`, `*_tls_ciphers` and `*_tls13_ciphers` mapped onto what rustls
//! offers. rustls has no TLS 1.0/1.1 and no CBC or RSA-key-exchange suites, so those names cannot be
//! honoured: they are reported as warnings and the remaining choice stands.

use super::TlsError;
use rustls::{SupportedCipherSuite, SupportedProtocolVersion};

/// Protocol versions from `tlsv1.2,tlsv1.3`-style lists and PgBouncer's `secure`, `all`, `legacy`.
pub fn versions(
    setting: &str,
    side: &str,
    warnings: &mut Vec<String>,
) -> Result<Vec<&'static SupportedProtocolVersion>, TlsError> {
    let mut out: Vec<&'static SupportedProtocolVersion> = Vec::new();
    let mut add = |v: &'static SupportedProtocolVersion| {
        if !out.iter().any(|o| o.version == v.version) {
            out.push(v);
        }
    };
    for token in setting
        .split(|c: char| c == ',' || c == ':' || c.is_whitespace())
        .filter(|t| !t.is_empty())
    {
        match token.to_ascii_lowercase().as_str() {
            "secure" | "all" | "legacy" | "default" => {
                add(&rustls::version::TLS12);
                add(&rustls::version::TLS13);
            }
            "tlsv1.2" => add(&rustls::version::TLS12),
            "tlsv1.3" => add(&rustls::version::TLS13),
            old @ ("tlsv1" | "tlsv1.0" | "tlsv1.1") => warnings.push(format!(
                "{side}_tls_protocols: {old} is not supported (rustls offers TLS 1.2 and 1.3 only)"
            )),
            other => {
                return Err(TlsError::Invalid(format!(
                    "{side}_tls_protocols: unknown protocol {other:?}"
                )))
            }
        }
    }
    if setting.trim().is_empty() {
        add(&rustls::version::TLS12);
        add(&rustls::version::TLS13);
    }
    if out.is_empty() {
        return Err(TlsError::Invalid(format!(
            "{side}_tls_protocols = {setting:?} leaves no protocol rustls supports"
        )));
    }
    Ok(out)
}

/// OpenSSL's names for the TLS 1.2 suites rustls implements.
const TLS12_NAMES: [(&str, &str); 6] = [
    (
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    ),
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    ),
    (
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    ),
    (
        "ECDHE-RSA-AES256-GCM-SHA384",
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    ),
    (
        "ECDHE-RSA-AES128-GCM-SHA256",
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    ),
    (
        "ECDHE-RSA-CHACHA20-POLY1305",
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
    ),
];

fn suite_name(s: &SupportedCipherSuite) -> &'static str {
    s.suite().as_str().unwrap_or("")
}

fn is_tls13(s: &SupportedCipherSuite) -> bool {
    matches!(s, SupportedCipherSuite::Tls13(_))
}

/// Filters `all` (rustls's defaults, best first) by the two cipher settings. Keywords (`default`,
/// `secure`, `fast`, `normal`, `all`, `HIGH`...) keep every suite, since each one rustls has is a
/// modern AEAD suite; explicit names keep only the suites named; unknown names are warnings.
pub fn select(
    all: &[SupportedCipherSuite],
    tls12: &str,
    tls13: &str,
    side: &str,
    warnings: &mut Vec<String>,
) -> Vec<SupportedCipherSuite> {
    let mut keep12: Option<Vec<&str>> = None;
    for token in tls12.split(':').map(str::trim).filter(|t| !t.is_empty()) {
        if let Some((_, iana)) = TLS12_NAMES
            .iter()
            .find(|(openssl, _)| openssl.eq_ignore_ascii_case(token))
        {
            keep12.get_or_insert_with(Vec::new).push(iana);
        } else if !is_keyword(token) {
            warnings.push(format!(
                "{side}_tls_ciphers: {token:?} is not a suite rustls offers and is ignored"
            ));
        }
    }
    let mut keep13: Option<Vec<String>> = None;
    for token in tls13.split(':').map(str::trim).filter(|t| !t.is_empty()) {
        // OpenSSL spells them TLS_AES_128_GCM_SHA256; rustls TLS13_AES_128_GCM_SHA256.
        let rustls_name = token.replacen("TLS_", "TLS13_", 1).to_ascii_uppercase();
        if all.iter().any(|s| suite_name(s) == rustls_name) {
            keep13.get_or_insert_with(Vec::new).push(rustls_name);
        } else if !is_keyword(token) {
            warnings.push(format!(
                "{side}_tls13_ciphers: {token:?} is not a suite rustls offers and is ignored"
            ));
        }
    }
    all.iter()
        .filter(|s| {
            let name = suite_name(s);
            if is_tls13(s) {
                keep13.as_ref().is_none_or(|k| k.iter().any(|n| n == name))
            } else {
                keep12.as_ref().is_none_or(|k| k.contains(&name))
            }
        })
        .copied()
        .collect()
}

fn is_keyword(token: &str) -> bool {
    let t = token.trim_start_matches(['!', '-', '+']);
    matches!(
        t.to_ascii_lowercase().as_str(),
        "default" | "secure" | "fast" | "normal" | "all" | "high" | "medium" | "anull" | "enull"
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names_narrow_the_suites_and_unknown_names_warn() {
        let all = rustls::crypto::ring::default_provider().cipher_suites;
        let mut w = Vec::new();
        let only = select(
            &all,
            "ECDHE-ECDSA-AES128-GCM-SHA256:DES-CBC3-SHA",
            "TLS_AES_256_GCM_SHA384",
            "client",
            &mut w,
        );
        let names: Vec<&str> = only.iter().map(suite_name).collect();
        assert_eq!(
            names,
            [
                "TLS13_AES_256_GCM_SHA384",
                "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"
            ]
        );
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("DES-CBC3-SHA"));
        let mut w = Vec::new();
        assert_eq!(
            select(&all, "default", "", "client", &mut w).len(),
            all.len()
        );
        assert!(w.is_empty());
    }

    #[test]
    fn protocols_follow_pgbouncer_keywords() {
        let mut w = Vec::new();
        assert_eq!(versions("secure", "client", &mut w).unwrap().len(), 2);
        let only13 = versions("tlsv1.3", "client", &mut w).unwrap();
        assert_eq!(only13.len(), 1);
        assert!(versions("tlsv1.1", "server", &mut w).is_err());
        assert!(w.iter().any(|m| m.contains("tlsv1.1")));
        assert!(versions("sslv3", "server", &mut w).is_err());
    }
}
