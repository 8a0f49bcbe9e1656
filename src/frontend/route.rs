//! Where a startup message leads, decided without IO: the user and database it names, the
//! parameters the client keeps, the protocol options to decline, or why it is refused before any
//! authentication (with PgBouncer's and PostgreSQL's words and codes).

use crate::backend::params::ParamSet;
use crate::config::General;
use crate::error::ClientError;
use crate::proto::sqlstate;
use crate::proto::startup::StartupMessage;

/// Parameters a client may set at startup without being refused.
const ALWAYS_ACCEPTED: [&str; 2] = ["user", "database"];

/// A startup message, routed.
#[derive(Debug, PartialEq)]
pub struct Route {
    pub user: String,
    /// The `database` parameter, else the user's name (as PostgreSQL does).
    pub database: String,
    pub target: Target,
    /// Protocol options (`_pq_.*`) to name in NegotiateProtocolVersion; see [`Route::negotiate`].
    pub declined_options: Vec<String>,
    /// The minor protocol version the client asked for; above 0 is declined.
    pub minor: u16,
}

#[derive(Debug, PartialEq)]
pub enum Target {
    /// The admin console (`pgbouncer` or `pgsluice`), which ignores startup parameters.
    Console,
    /// A pool; the tracked parameters the client set.
    Pool(ParamSet),
}

impl Route {
    /// Whether the client must be told NegotiateProtocolVersion before anything else.
    pub fn negotiate(&self) -> bool {
        self.minor > 0 || !self.declined_options.is_empty()
    }
}

/// Routes `m` under `g`. `is_disabled` says whether DISABLE holds a database.
pub fn route(
    m: &StartupMessage,
    g: &General,
    is_disabled: impl FnOnce(&str) -> bool,
) -> Result<Route, ClientError> {
    let declined_options: Vec<String> = m
        .params
        .iter()
        .filter(|(k, _)| k.starts_with("_pq_."))
        .map(|(k, _)| k.clone())
        .collect();
    let Some(user) = m.get("user").map(str::to_owned) else {
        return Err(ClientError::fatal(
            sqlstate::INVALID_AUTHORIZATION,
            "no PostgreSQL user name specified in startup packet",
            crate::error::Side::Client,
        ));
    };
    let database = m
        .get("database")
        .filter(|d| !d.is_empty())
        .unwrap_or(&user)
        .to_owned();
    let target = if crate::admin::is_console(&database) {
        Target::Console
    } else if is_disabled(&database) {
        return Err(ClientError::protocol_violation(format!(
            "database \"{database}\" is disabled"
        )));
    } else {
        Target::Pool(kept_parameters(m, g)?)
    };
    Ok(Route {
        user,
        database,
        target,
        declined_options,
        minor: m.minor,
    })
}

/// The tracked parameters the client set; ignored ones are dropped, any other is refused.
fn kept_parameters(m: &StartupMessage, g: &General) -> Result<ParamSet, ClientError> {
    let mut params = ParamSet::default();
    let listed = |list: &[String], k: &str| list.iter().any(|t| t.eq_ignore_ascii_case(k));
    for (k, v) in &m.params {
        if ALWAYS_ACCEPTED.contains(&k.as_str()) || k.starts_with("_pq_.") {
            continue;
        }
        if listed(&g.tracked_parameters, k) {
            params.set(k, v);
        } else if !listed(&g.ignore_startup_parameters, k) {
            return Err(ClientError::protocol_violation(format!(
                "unsupported startup parameter: {k}"
            )));
        }
    }
    Ok(params)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn startup(params: &[(&str, &str)]) -> StartupMessage {
        StartupMessage {
            minor: 0,
            params: params
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    fn general() -> General {
        let config = crate::config::Config::from_raw(
            Default::default(),
            std::path::Path::new("pgsluice.ini"),
            Vec::new(),
        );
        let mut g = config.expect("the defaults are valid").general;
        g.ignore_startup_parameters = vec!["extra_float_digits".into()];
        g
    }

    #[test]
    fn the_database_defaults_to_the_user() {
        let r = route(&startup(&[("user", "alice")]), &general(), |_| false).unwrap();
        assert_eq!((r.user.as_str(), r.database.as_str()), ("alice", "alice"));
        let r = route(
            &startup(&[("user", "alice"), ("database", "")]),
            &general(),
            |_| false,
        )
        .unwrap();
        assert_eq!(r.database, "alice", "an empty database is no database");
    }

    #[test]
    fn no_user_is_refused_with_28000() {
        let e = route(&startup(&[("database", "app")]), &general(), |_| false).unwrap_err();
        assert_eq!(e.code, "28000");
        assert!(e.message.contains("no PostgreSQL user name"));
    }

    #[test]
    fn tracked_parameters_are_kept_ignored_ones_dropped_others_refused() {
        let m = startup(&[
            ("user", "u"),
            ("database", "app"),
            ("application_name", "psql"),
            ("TimeZone", "UTC"),
            ("extra_float_digits", "3"),
        ]);
        let r = route(&m, &general(), |_| false).unwrap();
        let Target::Pool(p) = r.target else {
            panic!("a pool database routes to a pool")
        };
        assert_eq!(p.get("application_name"), Some("psql"));
        assert_eq!(p.get("TimeZone"), Some("UTC"));
        assert_eq!(p.get("extra_float_digits"), None);

        let m = startup(&[("user", "u"), ("search_path", "x")]);
        let e = route(&m, &general(), |_| false).unwrap_err();
        assert_eq!(
            (e.code.as_ref(), e.message.as_ref()),
            ("08P01", "unsupported startup parameter: search_path")
        );
    }

    #[test]
    fn the_console_ignores_parameters_and_a_disabled_database_is_refused() {
        let m = startup(&[
            ("user", "admin"),
            ("database", "pgbouncer"),
            ("search_path", "x"),
        ]);
        let r = route(&m, &general(), |_| true).unwrap();
        assert_eq!(
            r.target,
            Target::Console,
            "DISABLE never closes the console"
        );

        let m = startup(&[("user", "u"), ("database", "app")]);
        let e = route(&m, &general(), |db| db == "app").unwrap_err();
        assert_eq!(e.message, "database \"app\" is disabled");
    }

    #[test]
    fn protocol_options_and_newer_minors_are_declined() {
        let mut m = startup(&[("user", "u"), ("_pq_.compression", "on")]);
        let r = route(&m, &general(), |_| false).unwrap();
        assert!(r.negotiate());
        assert_eq!(r.declined_options, ["_pq_.compression"]);
        m.params.pop();
        m.minor = 2;
        assert!(route(&m, &general(), |_| false).unwrap().negotiate());
        m.minor = 0;
        assert!(!route(&m, &general(), |_| false).unwrap().negotiate());
    }
}
