//! Typed views of the few backend (server to client) message bodies the pooler inspects.

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

/// ReadyForQuery body: transaction status `I`, `T` or `E`.
pub fn ready_for_query(body: &[u8]) -> Result<u8, ProtoError> {
    match body {
        [s @ (b'I' | b'T' | b'E')] => Ok(*s),
        _ => Err(ProtoError::Malformed("ReadyForQuery")),
    }
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
    fn rejects_unterminated_strings() {
        assert!(error_fields(b"Sboom").is_err());
        assert!(parameter_status(b"a\0b").is_err());
        assert!(ready_for_query(b"").is_err());
    }
}
