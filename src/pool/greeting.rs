//! What a logging-in client is shown (its ParameterStatus messages) and what it keeps (its tracked
//! values), made once for all the clients of a pool that log in alike.
//!
//! Making it merges the server's parameters with the client's, encodes them and projects the
//! tracked names: a fifth of a login's instructions, outside SCRAM, before it was shared.

use super::Pool;
use crate::backend::params::ParamSet;
use crate::proto::encode;
use bytes::{Bytes, BytesMut};

#[derive(Debug, Clone)]
pub struct Greeting {
    /// ParameterStatus for every server parameter, with the client's own values over them.
    pub statuses: Bytes,
    /// The client's values of the tracked parameters (see [`ParamSet::project`]), which it keeps
    /// for its life: shared with every client that logged in alike.
    pub tracked: ParamSet,
}

impl Greeting {
    pub fn make(server: &ParamSet, client: &ParamSet, tracked: &[String]) -> Greeting {
        let shown = server.overlaid(client);
        let mut statuses = BytesMut::new();
        for (k, v) in shown.iter() {
            encode::parameter_status(&mut statuses, k, v);
        }
        Greeting {
            statuses: statuses.freeze(),
            tracked: shown.project(tracked),
        }
    }
}

/// The latest greeting a pool made, and what it was made from.
#[derive(Debug, Default)]
pub(super) struct LastGreeting {
    /// The server set's stamp: equal stamps, equal values.
    server: u64,
    client: ParamSet,
    names: Vec<String>,
    greeting: Option<Greeting>,
}

impl Pool {
    /// The greeting for a client with the `client` parameters, given the `server`'s: the previous
    /// client's when both are the same, so that most logins copy and encode nothing.
    pub fn greeting(&self, server: &ParamSet, client: &ParamSet, tracked: &[String]) -> Greeting {
        {
            let inner = self.inner.lock();
            let last = &inner.greeting;
            if let Some(g) = &last.greeting {
                if last.server == server.stamp() && last.client == *client && last.names == tracked
                {
                    return g.clone();
                }
            }
        }
        let mut made = Greeting::make(server, client, tracked);
        let mut inner = self.inner.lock();
        // Clients that differ in untracked values still share their tracked ones.
        if let Some(prev) = &inner.greeting.greeting {
            if prev.tracked == made.tracked {
                made.tracked = prev.tracked.clone();
            }
        }
        inner.greeting = LastGreeting {
            server: server.stamp(),
            client: client.clone(),
            names: tracked.to_vec(),
            greeting: Some(made.clone()),
        };
        made
    }
}
