//! Simple queries the pooler runs on a server itself (parameter alignment, reset, checks); their
//! replies are consumed here and never reach a client.

use super::connect::read_message;
use super::{BackendError, Server};
use crate::proto::{backend as msg, encode};
use bytes::BytesMut;

/// Runs `sql` and waits for ReadyForQuery. ParameterStatus updates the server's parameters; an
/// ErrorResponse fails the call (the server is then closed by the caller).
pub async fn run_simple(server: &mut Server, sql: &str) -> Result<(), BackendError> {
    let mut out = BytesMut::with_capacity(sql.len() + 6);
    encode::query(&mut out, sql);
    server.stream.write_flushed(&out).await?;
    let mut failure = None;
    loop {
        let (tag, body) = read_message(&mut server.stream, &mut server.rbuf).await?;
        match tag {
            b'S' => {
                let (k, v) = msg::parameter_status(&body)?;
                server.params.set(k, v);
            }
            b'E' => {
                let f = msg::error_fields(&body)?;
                failure = Some(BackendError::Login {
                    code: f.code.to_owned(),
                    message: f.message.to_owned(),
                });
            }
            b'Z' => {
                let status = msg::ready_for_query(&body)?;
                return match failure {
                    Some(e) => Err(e),
                    None if status != crate::proto::tx::TxStatus::Idle => {
                        Err(BackendError::Protocol(crate::proto::ProtoError::Malformed(
                            "pooler query left a transaction open",
                        )))
                    }
                    None => Ok(()),
                };
            }
            _ => {}
        }
    }
}

/// Runs a one-parameter query with the extended protocol (the parameter is never spliced into SQL)
/// and returns the second column of the first row: `auth_query`'s `(name, secret)` shape. `None`
/// when there is no row or the secret is NULL.
pub async fn lookup_second_column(
    server: &mut Server,
    sql: &str,
    param: &str,
) -> Result<Option<String>, BackendError> {
    use postgres_protocol::message::frontend;
    use postgres_protocol::IsNull;
    let mut out = BytesMut::with_capacity(sql.len() + param.len() + 64);
    frontend::parse("", sql, std::iter::empty(), &mut out)?;
    frontend::bind(
        "",
        "",
        std::iter::once(0i16),
        std::iter::once(param),
        |p, buf| {
            buf.extend_from_slice(p.as_bytes());
            Ok(IsNull::No)
        },
        std::iter::once(0i16),
        &mut out,
    )
    .map_err(|_| crate::proto::ProtoError::Malformed("auth_query parameter"))?;
    frontend::execute("", 1, &mut out)?;
    frontend::sync(&mut out);
    server.stream.write_flushed(&out).await?;
    let mut failure = None;
    let mut found = None;
    let mut rows = 0usize;
    loop {
        let (tag, body) = read_message(&mut server.stream, &mut server.rbuf).await?;
        match tag {
            b'D' => {
                rows += 1;
                if rows == 1 {
                    found = msg::data_row_column(&body, 1)?;
                }
            }
            b'E' => {
                let f = msg::error_fields(&body)?;
                failure = Some(BackendError::Login {
                    code: f.code.to_owned(),
                    message: f.message.to_owned(),
                });
            }
            b'Z' => {
                return match failure {
                    Some(e) => Err(e),
                    None => Ok(found),
                }
            }
            _ => {}
        }
    }
}
