//! Typed views of the few backend (server to client) message bodies the pooler inspects.

use super::tx::TxStatus;
use super::ProtoError;

/// Splits a NUL-terminated string off the front of `buf`.
pub fn cstr(buf: &[u8]) -> Result<(&str, &[u8]), ProtoError> {
    let end = buf
        .iter()
        .position(|&b| b == 0)
        .ok_or(ProtoError::Malformed("string"))?;
    let s = std::str::from_utf8(&buf[..end]).map_err(|_| ProtoError::Malformed("string"))?;
    Ok((s, &buf[end + 1..]))
}

/// ParameterStatus body: name and value.
pub fn parameter_status(body: &[u8]) -> Result<(&str, &str), ProtoError> {
    let (name, rest) = cstr(body)?;
    let (value, _) = cstr(rest)?;
    Ok((name, value))
}

/// ReadyForQuery body: the transaction status.
pub fn ready_for_query(body: &[u8]) -> Result<TxStatus, ProtoError> {
    match body {
        [s] => TxStatus::from_byte(*s).ok_or(ProtoError::Malformed("ReadyForQuery")),
        _ => Err(ProtoError::Malformed("ReadyForQuery")),
    }
}

/// An Authentication request (`R`), by its code.
#[derive(Debug, PartialEq, Eq)]
pub enum AuthRequest<'a> {
    /// 0: logged in.
    Ok,
    /// 3: the password in the clear.
    CleartextPassword,
    /// 5: an md5 response salted with these bytes.
    Md5Password { salt: [u8; 4] },
    /// 10: a SASL exchange; the body lists the mechanisms, NUL-terminated.
    Sasl { mechanisms: &'a [u8] },
    /// 11: the next SASL challenge (SCRAM's server-first message).
    SaslContinue(&'a [u8]),
    /// 12: the SASL outcome (SCRAM's server-final message).
    SaslFinal(&'a [u8]),
    /// A code pgsluice does not answer (Kerberos, GSS, SSPI, ...).
    Other(u32),
}

impl<'a> AuthRequest<'a> {
    /// The mechanisms a `Sasl` request offers; none for any other request.
    pub fn mechanisms(&self) -> impl Iterator<Item = &'a [u8]> {
        let list: &'a [u8] = match self {
            AuthRequest::Sasl { mechanisms } => mechanisms,
            _ => &[],
        };
        list.split(|&b| b == 0).filter(|m| !m.is_empty())
    }
}

/// Authentication body: the request the server makes.
pub fn authentication(body: &[u8]) -> Result<AuthRequest<'_>, ProtoError> {
    let bad = || ProtoError::Malformed("Authentication");
    let (code, rest) = body.split_first_chunk::<4>().ok_or_else(bad)?;
    Ok(match u32::from_be_bytes(*code) {
        0 => AuthRequest::Ok,
        3 => AuthRequest::CleartextPassword,
        5 => AuthRequest::Md5Password {
            salt: *rest.first_chunk::<4>().ok_or_else(bad)?,
        },
        10 => AuthRequest::Sasl { mechanisms: rest },
        11 => AuthRequest::SaslContinue(rest),
        12 => AuthRequest::SaslFinal(rest),
        other => AuthRequest::Other(other),
    })
}

/// BackendKeyData body: the process id and secret a CancelRequest names.
pub fn backend_key_data(body: &[u8]) -> Result<(u32, u32), ProtoError> {
    let bad = || ProtoError::Malformed("BackendKeyData");
    let (pid, rest) = body.split_first_chunk::<4>().ok_or_else(bad)?;
    let secret = rest.first_chunk::<4>().ok_or_else(bad)?;
    Ok((u32::from_be_bytes(*pid), u32::from_be_bytes(*secret)))
}

/// Column `index` of a DataRow as text; `None` for NULL.
pub fn data_row_column(body: &[u8], index: usize) -> Result<Option<String>, ProtoError> {
    let bad = || ProtoError::Malformed("DataRow");
    let (count, mut rest) = body.split_first_chunk::<2>().ok_or_else(bad)?;
    if index >= usize::from(u16::from_be_bytes(*count)) {
        return Err(bad());
    }
    for i in 0..=index {
        let (len, after) = rest.split_first_chunk::<4>().ok_or_else(bad)?;
        let len = i32::from_be_bytes(*len);
        let Ok(len) = usize::try_from(len) else {
            if i == index {
                return Ok(None);
            }
            rest = after;
            continue;
        };
        let (value, after) = after.split_at_checked(len).ok_or_else(bad)?;
        if i == index {
            return std::str::from_utf8(value)
                .map(|v| Some(v.to_owned()))
                .map_err(|_| bad());
        }
        rest = after;
    }
    Err(bad())
}

/// The fields of an ErrorResponse or NoticeResponse the pooler cares about.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ErrorFields<'a> {
    /// Non-localized severity (`V`), falling back to `S`.
    pub severity: &'a str,
    pub code: &'a str,
    pub message: &'a str,
}

impl ErrorFields<'_> {
    /// FATAL and PANIC mean the server closes the connection after this message.
    pub fn is_fatal(&self) -> bool {
        matches!(self.severity, "FATAL" | "PANIC")
    }
}

pub fn error_fields(body: &[u8]) -> Result<ErrorFields<'_>, ProtoError> {
    let mut out = ErrorFields::default();
    let mut rest = body;
    let mut localized = "";
    loop {
        match rest {
            [0] | [] => break,
            [field, tail @ ..] => {
                let (value, next) = cstr(tail)?;
                match field {
                    b'S' => localized = value,
                    b'V' => out.severity = value,
                    b'C' => out.code = value,
                    b'M' => out.message = value,
                    _ => {}
                }
                rest = next;
            }
        }
    }
    if out.severity.is_empty() {
        out.severity = localized;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_error_fields() {
        let body =
            b"SFATAL\0VFATAL\0C57P01\0Mterminating connection due to administrator command\0\0";
        let f = error_fields(body).unwrap();
        assert_eq!(f.code, "57P01");
        assert!(f.is_fatal());
    }

    #[test]
    fn names_authentication_requests() {
        assert_eq!(authentication(&[0, 0, 0, 0]), Ok(AuthRequest::Ok));
        assert_eq!(
            authentication(&[0, 0, 0, 5, 1, 2, 3, 4]),
            Ok(AuthRequest::Md5Password { salt: [1, 2, 3, 4] })
        );
        assert!(authentication(&[0, 0, 0, 5, 1, 2]).is_err(), "a short salt");
        assert!(authentication(&[0, 0]).is_err(), "no code");
        let sasl = authentication(b"\0\0\0\x0aSCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0").unwrap();
        let offered: Vec<&[u8]> = sasl.mechanisms().collect();
        assert_eq!(offered, [&b"SCRAM-SHA-256-PLUS"[..], b"SCRAM-SHA-256"]);
        assert_eq!(authentication(&[0, 0, 0, 7]), Ok(AuthRequest::Other(7)));
        assert_eq!(backend_key_data(&[0, 0, 0, 9, 0, 0, 1, 0]), Ok((9, 256)));
        assert!(backend_key_data(&[0, 0, 0, 9, 0]).is_err());
    }

    #[test]
    fn rejects_unterminated_strings() {
        assert!(error_fields(b"Sboom").is_err());
        assert!(parameter_status(b"a\0b").is_err());
        assert!(ready_for_query(b"").is_err());
    }
}
