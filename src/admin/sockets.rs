//! SHOW CLIENTS, SERVERS, SOCKETS and ACTIVE_SOCKETS: PgBouncer's socket listings, one row per
//! client or server connection.

use super::table::{Col, Table, Val};
use super::{ClientRow, Console, ServerRow};
use bytes::BytesMut;
use Col::{Int4, Text};

/// SHOW SOCKETS and ACTIVE_SOCKETS: the socket header plus PgBouncer's seven buffer columns.
const SOCKETS_DEBUG: &[(&str, Col)] = &[
    ("type", Text),
    ("user", Text),
    ("database", Text),
    ("replication", Text),
    ("state", Text),
    ("addr", Text),
    ("port", Int4),
    ("local_addr", Text),
    ("local_port", Int4),
    ("connect_time", Text),
    ("request_time", Text),
    ("wait", Int4),
    ("wait_us", Int4),
    ("close_needed", Int4),
    ("ptr", Text),
    ("link", Text),
    ("remote_pid", Int4),
    ("tls", Text),
    ("application_name", Text),
    ("prepared_statements", Int4),
    ("id", Int4),
    ("recv_pos", Int4),
    ("pkt_pos", Int4),
    ("pkt_remain", Int4),
    ("send_pos", Int4),
    ("send_remain", Int4),
    ("pkt_avail", Int4),
    ("send_avail", Int4),
];

/// SHOW CLIENTS and SHOW SERVERS: the same header without the buffer columns (1.24+, 21 columns).
const SOCKETS: &[(&str, Col)] = SOCKETS_DEBUG.split_at(21).0;

/// SHOW CLIENTS' row of a client; SHOW SOCKETS shows the same with `state` given.
fn client_row(c: &ClientRow, state: &'static str) -> Vec<Val<'static>> {
    // PgBouncer shows pointers; the server's backend pid names the link as well.
    let link = if c.server_pid == 0 {
        String::new()
    } else {
        format!("server pid {}", c.server_pid)
    };
    let tls = if c.tls { "TLS" } else { "" };
    vec![
        "C".into(),
        c.user.clone().into(),
        c.database.clone().into(),
        "none".into(),
        state.into(),
        c.addr.clone().into(),
        u64::from(c.port).into(),
        c.local_addr.clone().into(),
        u64::from(c.local_port).into(),
        c.connect_time.clone().into(),
        c.connect_time.clone().into(),
        // PgBouncer splits the wait into whole seconds and the microseconds beyond them.
        (c.wait_us / 1_000_000).into(),
        (c.wait_us % 1_000_000).into(),
        0u64.into(),
        format!("{:x}", c.id).into(),
        link.into(),
        0u64.into(),
        tls.into(),
        c.application_name.clone().into(),
        0u64.into(),
        c.id.into(),
    ]
}

/// SHOW SERVERS' row of a server; SHOW SOCKETS shows the same with `state` given.
fn server_row(s: &ServerRow, state: &'static str) -> Vec<Val<'static>> {
    let link = s.client.map_or(String::new(), |c| format!("{c:x}"));
    let tls = if s.tls { "TLS" } else { "" };
    vec![
        "S".into(),
        s.user.clone().into(),
        s.database.clone().into(),
        "none".into(),
        state.into(),
        s.addr.clone().into(),
        u64::from(s.port).into(),
        "".into(),
        0u64.into(),
        s.connect_time.clone().into(),
        s.request_time.clone().into(),
        0u64.into(),
        0u64.into(),
        u64::from(s.close_needed).into(),
        format!("{:x}", s.id).into(),
        link.into(),
        u64::from(s.remote_pid).into(),
        tls.into(),
        "".into(),
        s.prepared_statements.into(),
        s.id.into(),
    ]
}

pub(super) fn clients(console: &impl Console, out: &mut BytesMut) {
    let mut t = Table::new(out, SOCKETS);
    for c in console.clients() {
        t.row(&client_row(&c, c.state));
    }
    t.finish();
}

pub(super) fn servers(console: &impl Console, out: &mut BytesMut) {
    let mut t = Table::new(out, SOCKETS);
    for s in console.servers() {
        t.row(&server_row(&s, s.state));
    }
    t.finish();
}

/// SHOW SOCKETS: clients and servers in PgBouncer's debug layout, states named by list
/// (`cl_active`, `sv_idle`, ...). The seven buffer columns describe PgBouncer's own I/O buffers;
/// pgsluice's relay keeps none between messages, so they are 0. SHOW ACTIVE_SOCKETS, "sockets with
/// data under way" in PgBouncer, lists those moving a request: clients holding a server and the
/// servers they hold.
pub(super) fn sockets(console: &impl Console, out: &mut BytesMut, active_only: bool) {
    let mut t = Table::new(out, SOCKETS_DEBUG);
    let buffers = [0u64; 7].map(Val::from);
    for c in console.clients() {
        let state = match c.state {
            "waiting" => "cl_waiting",
            "login" => "cl_login",
            _ => "cl_active",
        };
        if active_only && c.server_pid == 0 {
            continue;
        }
        let mut row = client_row(&c, state);
        row.extend(buffers.iter().cloned());
        t.row(&row);
    }
    for s in console.servers() {
        let state = match s.state {
            "active" => "sv_active",
            "used" => "sv_used",
            "tested" => "sv_tested",
            "login" => "sv_login",
            _ => "sv_idle",
        };
        if active_only && s.client.is_none() {
            continue;
        }
        let mut row = server_row(&s, state);
        row.extend(buffers.iter().cloned());
        t.row(&row);
    }
    t.finish();
}
