//! PgBouncer's admin console, on the virtual database `pgbouncer` (alias `pgsluice`): the command
//! parser, the result sets with PgBouncer 1.25's exact layouts, and what each command does, asked
//! of a [`Console`] that the application implements. Nothing here does IO or knows of clients'
//! sockets: the frontend reads a Query, calls [`execute`], writes what it produced.
//!

pub mod command;
mod show;
mod sockets;
pub mod table;

pub use command::{Command, ShutdownMode};

use crate::proto::encode;
use crate::proto::sqlstate::{
    CONFIG_FILE_ERROR, FEATURE_NOT_SUPPORTED, INSUFFICIENT_PRIVILEGE, PROTOCOL_VIOLATION,
};
use bytes::BytesMut;

/// SHOW VERSION's value and the first line of `--version`. Tools that read PgBouncer's version
/// from it find the release whose console layouts pgsluice follows.
pub const VERSION: &str = concat!(
    "PgBouncer 1.25.0 compatible, pgsluice ",
    env!("CARGO_PKG_VERSION")
);

/// The console's `server_version` parameter, shaped as PgBouncer's (`<version>/bouncer`).
pub const SERVER_VERSION: &str = "1.25.0/pgsluice";

/// The names under which the console is reached.
pub const DATABASES: [&str; 2] = ["pgbouncer", "pgsluice"];

pub fn is_console(database: &str) -> bool {
    DATABASES.contains(&database)
}

/// What a console user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `admin_users`, and user `pgbouncer` on the unix socket from the pooler's own uid.
    Admin,
    /// `stats_users`: read-only SHOW.
    Stats,
}

/// One pool, for SHOW POOLS.
#[derive(Debug, Clone, Default)]
pub struct PoolRow {
    pub database: String,
    pub user: String,
    pub cl_active: usize,
    pub cl_waiting: usize,
    pub sv_active: usize,
    pub sv_idle: usize,
    pub sv_used: usize,
    pub sv_tested: usize,
    pub sv_login: usize,
    /// Age of the oldest waiting client.
    pub maxwait_us: u64,
    pub pool_mode: &'static str,
}

/// PgBouncer's eleven statistics, as totals or as per-second / per-event averages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub server_assignment_count: u64,
    pub xact_count: u64,
    pub query_count: u64,
    pub received: u64,
    pub sent: u64,
    pub xact_time: u64,
    pub query_time: u64,
    pub wait_time: u64,
    pub client_parse_count: u64,
    pub server_parse_count: u64,
    pub bind_count: u64,
}

impl Counters {
    pub fn values(&self) -> [u64; 11] {
        [
            self.server_assignment_count,
            self.xact_count,
            self.query_count,
            self.received,
            self.sent,
            self.xact_time,
            self.query_time,
            self.wait_time,
            self.client_parse_count,
            self.server_parse_count,
            self.bind_count,
        ]
    }
}

/// One database, for SHOW STATS and its relatives.
#[derive(Debug, Clone, Default)]
pub struct DatabaseStats {
    pub database: String,
    pub totals: Counters,
    pub averages: Counters,
}

/// One `[databases]` entry (or the console itself), for SHOW DATABASES.
#[derive(Debug, Clone, Default)]
pub struct DatabaseRow {
    pub name: String,
    pub host: Option<String>,
    pub port: u16,
    pub database: String,
    pub force_user: Option<String>,
    pub pool_size: usize,
    pub min_pool_size: usize,
    pub reserve_pool_size: usize,
    pub server_lifetime: u64,
    pub pool_mode: Option<String>,
    pub max_connections: usize,
    pub current_connections: usize,
    pub max_client_connections: usize,
    pub current_client_connections: usize,
    pub paused: bool,
    pub disabled: bool,
}

/// One `[users]` entry, for SHOW USERS.
#[derive(Debug, Clone, Default)]
pub struct UserRow {
    pub name: String,
    pub pool_size: Option<usize>,
    pub reserve_pool_size: Option<usize>,
    pub pool_mode: Option<String>,
    pub max_user_connections: usize,
    pub current_connections: usize,
    pub max_user_client_connections: usize,
    pub current_client_connections: usize,
}

/// One peer, for SHOW PEERS.
#[derive(Debug, Clone, Default)]
pub struct PeerRow {
    pub id: u16,
    pub host: String,
    pub port: u16,
    pub pool_size: usize,
}

/// One client, for SHOW CLIENTS.
#[derive(Debug, Clone, Default)]
pub struct ClientRow {
    pub user: String,
    pub database: String,
    /// `active` (holds a server), `waiting` (asks for one) or `idle`.
    pub state: &'static str,
    /// The peer's IP, or `unix`.
    pub addr: String,
    pub port: u16,
    pub local_addr: String,
    pub local_port: u16,
    /// PgBouncer's time text, `YYYY-MM-DD HH:MM:SS UTC`.
    pub connect_time: String,
    /// The PostgreSQL backend pid of the server it holds (0 if none).
    pub server_pid: u32,
    pub tls: bool,
    pub id: u64,
    pub application_name: String,
    /// How long a waiting client has waited, in microseconds (0 unless waiting).
    pub wait_us: u64,
}

/// One server, for SHOW SERVERS.
#[derive(Debug, Clone, Default)]
pub struct ServerRow {
    pub user: String,
    pub database: String,
    /// `active` (held by a client) or `idle`.
    pub state: &'static str,
    pub addr: String,
    pub port: u16,
    /// PgBouncer's time texts: when it was opened, and last used (idle) or checked out (active).
    pub connect_time: String,
    pub request_time: String,
    /// The PostgreSQL backend pid.
    pub remote_pid: u32,
    pub tls: bool,
    pub id: u64,
    /// SHOW CLIENTS' id of the client holding it.
    pub client: Option<u64>,
    /// It will be closed when released (RECONNECT, a moved or removed database).
    pub close_needed: bool,
    /// Statements the pooler prepared on it.
    pub prepared_statements: usize,
}

/// One setting, for SHOW CONFIG.
#[derive(Debug, Clone, Default)]
pub struct ConfigRow {
    pub key: String,
    pub value: String,
    pub default: String,
    pub changeable: bool,
}

/// Counts for SHOW LISTS.
#[derive(Debug, Clone, Copy, Default)]
pub struct Lists {
    pub databases: usize,
    pub users: usize,
    pub pools: usize,
    pub free_clients: usize,
    pub used_clients: usize,
    pub login_clients: usize,
    pub free_servers: usize,
    pub used_servers: usize,
}

/// What the console reads from, and asks of, the running pooler.
pub trait Console {
    fn version(&self) -> String;
    fn pools(&self) -> Vec<PoolRow>;
    fn clients(&self) -> Vec<ClientRow>;
    fn servers(&self) -> Vec<ServerRow>;
    fn stats(&self) -> Vec<DatabaseStats>;
    fn databases(&self) -> Vec<DatabaseRow>;
    fn users(&self) -> Vec<UserRow>;
    fn config(&self) -> Vec<ConfigRow>;
    fn peers(&self) -> Vec<PeerRow>;
    fn lists(&self) -> Lists;
    /// (paused, shutting down)
    fn state(&self) -> (bool, bool);
    /// Starts a PAUSE of one database or all; [`Console::paused`] says when it is done.
    fn pause(&self, db: Option<&str>) -> Result<(), String>;
    /// No server of the paused target is in use any more.
    fn paused(&self, db: Option<&str>) -> bool;
    /// No server opened before the last RECONNECT of the target remains.
    fn closed(&self, db: Option<&str>) -> bool;
    /// A database by that name is configured (or opened through `*`).
    fn has_database(&self, db: &str) -> bool;
    fn resume(&self, db: Option<&str>) -> Result<(), String>;
    fn reload(&self) -> Result<(), String>;
    /// SET: a changeable setting (SHOW CONFIG's `changeable`), applied as a reload would.
    fn set(&self, key: &str, value: &str) -> Result<(), String>;
    fn set_disabled(&self, db: &str, disabled: bool) -> Result<(), String>;
    /// Servers of `db` (or all) are closed as they are released; idle ones at once.
    fn reconnect(&self, db: Option<&str>) -> Result<(), String>;
    /// KILL: pauses one database (or all) and closes its clients and servers at once.
    fn kill(&self, db: Option<&str>) -> Result<(), String>;
    /// Closes the client with SHOW CLIENTS' `id`.
    fn kill_client(&self, id: u64) -> Result<(), String>;
    fn shutdown(&self, mode: ShutdownMode);
}

/// What the frontend does once the reply is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum After {
    /// ReadyForQuery; the next command.
    Ready,
    /// Wait until the condition holds for the database (or all), then CommandComplete (`PAUSE`,
    /// `WAIT_CLOSE`) and ReadyForQuery.
    Wait(Until, Option<String>),
    /// Close the connection (the process is going away).
    Close,
}

/// What a deferred command waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// [`Console::paused`]: PAUSE.
    Paused,
    /// [`Console::closed`]: WAIT_CLOSE.
    Closed,
}

impl Until {
    pub fn tag(self) -> &'static str {
        match self {
            Until::Paused => "PAUSE",
            Until::Closed => "WAIT_CLOSE",
        }
    }
}

/// PgBouncer's admin errors: S ERROR, the given code, the message.
pub fn error(out: &mut BytesMut, code: &str, message: &str) {
    encode::error_with_fields(out, &[(b'S', "ERROR"), (b'C', code), (b'M', message)]);
}

/// Runs one simple Query's text; the reply goes to `out`, ReadyForQuery excepted.
pub fn execute(console: &impl Console, role: Role, query: &str, out: &mut BytesMut) -> After {
    let cmd = match command::parse(query) {
        Ok(c) => c,
        Err(e) => {
            error(out, PROTOCOL_VIOLATION, &e);
            return After::Ready;
        }
    };
    if role == Role::Stats && !cmd.read_only() {
        error(out, INSUFFICIENT_PRIVILEGE, "admin access needed");
        return After::Ready;
    }
    let (result, tag) = match cmd {
        Command::Show(target) => (show::show(console, &target, out), None),
        Command::Pause(db) => match console.pause(db.as_deref()) {
            Ok(()) => return After::Wait(Until::Paused, db),
            Err(e) => (Err(e), None),
        },
        Command::WaitClose(db) => match db {
            Some(d) if !console.has_database(&d) => (Err(format!("no such database: {d}")), None),
            db => return After::Wait(Until::Closed, db),
        },
        Command::Reload => return reload(console, out),
        Command::Shutdown(mode) => {
            console.shutdown(mode);
            if mode == ShutdownMode::Immediate {
                return After::Close;
            }
            (Ok(()), Some("SHUTDOWN"))
        }
        // PgBouncer's SUSPEND prepares an online restart (-R), which pgsluice does not do.
        Command::Suspend => {
            let m = "SUSPEND is not supported: pgsluice has no online restart";
            error(out, FEATURE_NOT_SUPPORTED, m);
            return After::Ready;
        }
        Command::Resume(db) => (console.resume(db.as_deref()), Some("RESUME")),
        Command::Disable(db) => (console.set_disabled(&db, true), Some("DISABLE")),
        Command::Enable(db) => (console.set_disabled(&db, false), Some("ENABLE")),
        Command::Reconnect(db) => (console.reconnect(db.as_deref()), Some("RECONNECT")),
        Command::KillClient(id) => {
            let r = id
                .parse::<u64>()
                .map_err(|_| "invalid client pointer supplied".to_owned())
                .and_then(|id| console.kill_client(id));
            (r, Some("KILL_CLIENT"))
        }
        Command::Kill(db) => (console.kill(db.as_deref()), Some("KILL")),
        Command::Set { key, value } => (console.set(&key, &value), Some("SET")),
    };
    match (result, tag) {
        (Ok(()), Some(tag)) => encode::command_complete(out, tag),
        (Ok(()), None) => {}
        (Err(e), _) => error(out, PROTOCOL_VIOLATION, &e),
    }
    After::Ready
}

/// RELOAD: a failure keeps the configuration in force and is told as PgBouncer tells it.
fn reload(console: &impl Console, out: &mut BytesMut) -> After {
    match console.reload() {
        Ok(()) => encode::command_complete(out, "RELOAD"),
        Err(e) => {
            tracing::error!("RELOAD failed, keeping the previous configuration: {e}");
            let m = "RELOAD failed, see logs for additional details";
            error(out, CONFIG_FILE_ERROR, m);
        }
    }
    After::Ready
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pooler with nothing configured whose reload fails: the console's own behaviour, apart
    /// from any data.
    struct Empty;

    impl Console for Empty {
        fn version(&self) -> String {
            "pgsluice test".into()
        }
        fn pools(&self) -> Vec<PoolRow> {
            Vec::new()
        }
        fn clients(&self) -> Vec<ClientRow> {
            Vec::new()
        }
        fn servers(&self) -> Vec<ServerRow> {
            Vec::new()
        }
        fn stats(&self) -> Vec<DatabaseStats> {
            Vec::new()
        }
        fn databases(&self) -> Vec<DatabaseRow> {
            Vec::new()
        }
        fn users(&self) -> Vec<UserRow> {
            Vec::new()
        }
        fn config(&self) -> Vec<ConfigRow> {
            Vec::new()
        }
        fn peers(&self) -> Vec<PeerRow> {
            Vec::new()
        }
        fn lists(&self) -> Lists {
            Lists::default()
        }
        fn state(&self) -> (bool, bool) {
            (false, false)
        }
        fn pause(&self, _: Option<&str>) -> Result<(), String> {
            Ok(())
        }
        fn paused(&self, _: Option<&str>) -> bool {
            true
        }
        fn closed(&self, _: Option<&str>) -> bool {
            true
        }
        fn has_database(&self, db: &str) -> bool {
            db == "app"
        }
        fn resume(&self, _: Option<&str>) -> Result<(), String> {
            Ok(())
        }
        fn reload(&self) -> Result<(), String> {
            Err("userlist.txt: no such file".into())
        }
        fn set(&self, key: &str, _: &str) -> Result<(), String> {
            Err(format!("unknown config parameter: {key}"))
        }
        fn set_disabled(&self, _: &str, _: bool) -> Result<(), String> {
            Ok(())
        }
        fn reconnect(&self, _: Option<&str>) -> Result<(), String> {
            Ok(())
        }
        fn kill(&self, _: Option<&str>) -> Result<(), String> {
            Ok(())
        }
        fn kill_client(&self, _: u64) -> Result<(), String> {
            Err("client not found".into())
        }
        fn shutdown(&self, _: ShutdownMode) {}
    }

    /// The reply's message tags, and the SQLSTATE and message of its error, if any.
    fn reply(role: Role, query: &str) -> (String, After, Option<(String, String)>) {
        let mut out = BytesMut::new();
        let after = execute(&Empty, role, query, &mut out);
        let (mut tags, mut error) = (String::new(), None);
        let mut rest = &out[..];
        while rest.len() >= 5 {
            let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
            let (frame, next) = rest.split_at(1 + len);
            tags.push(char::from(frame[0]));
            if frame[0] == b'E' {
                let fields: Vec<&[u8]> = frame[5..].split(|&b| b == 0).collect();
                let field = |t: u8| {
                    fields
                        .iter()
                        .find(|f| f.first() == Some(&t))
                        .map(|f| String::from_utf8_lossy(&f[1..]).into_owned())
                        .unwrap_or_default()
                };
                error = Some((field(b'C'), field(b'M')));
            }
            rest = next;
        }
        assert!(rest.is_empty(), "a frame was cut short");
        (tags, after, error)
    }

    #[test]
    fn commands_answer_as_pgbouncers_console_does() {
        // A result set: RowDescription, no rows, CommandComplete.
        assert_eq!(reply(Role::Stats, "SHOW POOLS;").0, "TC");
        assert_eq!(reply(Role::Stats, "show version").0, "TDC");
        let (tags, after, _) = reply(Role::Admin, "RESUME");
        assert_eq!((tags.as_str(), after), ("C", After::Ready));
        // PAUSE answers only once the pooler says every server is released.
        let (tags, after, _) = reply(Role::Admin, "PAUSE app");
        assert_eq!(
            (tags.as_str(), after),
            ("", After::Wait(Until::Paused, Some("app".into())))
        );
        assert_eq!(reply(Role::Admin, "SHUTDOWN").1, After::Close);
    }

    #[test]
    fn refusals_are_errors_and_the_console_goes_on() {
        let cases = [
            (Role::Stats, "PAUSE", "42501", "admin access needed"),
            (Role::Admin, "RELOAD", "F0000", "RELOAD failed, see logs"),
            (
                Role::Admin,
                "frobnicate",
                "08P01",
                "invalid command 'frobnicate'",
            ),
            (
                Role::Admin,
                "SUSPEND",
                "0A000",
                "SUSPEND is not supported: pgsluice has no online restart",
            ),
            (Role::Admin, "KILL_CLIENT 12", "08P01", "client not found"),
            (
                Role::Admin,
                "SET nosuch = 1",
                "08P01",
                "unknown config parameter: nosuch",
            ),
            (
                Role::Stats,
                "SET default_pool_size = 1",
                "42501",
                "admin access needed",
            ),
            (
                Role::Admin,
                "WAIT_CLOSE nosuch",
                "08P01",
                "no such database: nosuch",
            ),
            (
                Role::Admin,
                "KILL_CLIENT x",
                "08P01",
                "invalid client pointer supplied",
            ),
        ];
        for (role, query, code, message) in cases {
            let (tags, after, error) = reply(role, query);
            let (got_code, got_message) = error.unwrap_or_default();
            assert_eq!((tags.as_str(), after), ("E", After::Ready), "{query}");
            assert_eq!(got_code, code, "{query}");
            assert!(got_message.contains(message), "{query}: {got_message}");
        }
        // A failed reload's cause goes to the log, not to the console's user.
        let (_, _, error) = reply(Role::Admin, "RELOAD");
        assert!(!error.unwrap_or_default().1.contains("userlist"));
    }
}
