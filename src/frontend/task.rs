//! A client's task, as a state machine written by hand.
//!
//! A task's size is fixed at spawn by its largest state, and most clients spend most of their life
//! idle. Idle, this task holds the session itself (no future, no box of its own) and polls the
//! socket, the idle timer and the shutdown nudge directly. Everything else (the login, a request,
//! the goodbye) runs in a boxed future that owns the session while it runs and hands it back, so
//! nothing is borrowed across states.

use super::session::{self, Farewell, Session, Woke};
use super::{log_in, Accepted};
use crate::app::App;
use crate::error::Disconnect;
use crate::shutdown::ClientGuard;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use tracing::Instrument;

type Boxed<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Serves one client from its first byte to its last; spawn it.
pub struct ClientTask {
    state: State,
    /// Counts the client against `max_client_conn` until the task ends.
    _guard: ClientGuard,
}

// Idle is the large state on purpose: boxing the session would cost every idle client an
// allocation of its own, and the task is as large as its largest state anyway.
#[allow(clippy::large_enum_variant)]
enum State {
    LoggingIn(Boxed<(Arc<App>, Option<Session>)>),
    Idle(Arc<App>, Session),
    /// A request (or an error owed from the last one): gives the session back, or why it ends.
    Busy(Boxed<(Arc<App>, Session, Option<Disconnect>)>),
    /// The client is told why if it should be, the disconnect is logged, the socket shut down.
    Closing(Boxed<()>),
    /// Only while the session moves from one state to the next.
    Done,
}

impl ClientTask {
    /// `span` names the client in what the login logs.
    pub fn new(
        app: Arc<App>,
        accepted: Box<Accepted>,
        guard: ClientGuard,
        span: tracing::Span,
    ) -> Self {
        let login = Box::pin(
            async move {
                let s = log_in(&app, accepted).await;
                (app, s)
            }
            .instrument(span),
        );
        Self {
            state: State::LoggingIn(login),
            _guard: guard,
        }
    }
}

impl Future for ClientTask {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let state = &mut self.state;
        // Pending polls leave the state in place; only a change of state moves the session.
        loop {
            let next = match state {
                State::LoggingIn(f) => match ready!(f.as_mut().poll(cx)) {
                    (_, None) => return Poll::Ready(()),
                    (app, Some(s)) => idle(app, s),
                },
                State::Idle(app, s) => match ready!(session::poll_idle(app, s, cx)) {
                    Woke::Request => {
                        let State::Idle(app, mut s) = std::mem::replace(state, State::Done) else {
                            return Poll::Ready(());
                        };
                        State::Busy(Box::pin(async move {
                            let end = session::serve(&app, &mut s).await;
                            (app, s, end)
                        }))
                    }
                    Woke::End(why) => {
                        let State::Idle(app, s) = std::mem::replace(state, State::Done) else {
                            return Poll::Ready(());
                        };
                        let span = goodbye_span(&app, &s, &why);
                        State::Closing(Box::pin(goodbye(app, s, why).instrument(span)))
                    }
                },
                State::Busy(f) => match ready!(f.as_mut().poll(cx)) {
                    (app, s, None) => idle(app, s),
                    (app, s, Some(reason)) => {
                        let why = Farewell::Ended(reason);
                        let span = goodbye_span(&app, &s, &why);
                        let bye = goodbye(app, s, why);
                        State::Closing(Box::pin(bye.instrument(span)))
                    }
                },
                State::Closing(f) => {
                    ready!(f.as_mut().poll(cx));
                    return Poll::Ready(());
                }
                State::Done => return Poll::Ready(()),
            };
            *state = next;
        }
    }
}

/// The idle state, with `client_idle_timeout` counting from now.
fn idle(app: Arc<App>, mut s: Session) -> State {
    session::arm_idle_timer(&app, &mut s);
    State::Idle(app, s)
}

/// The span that names the client in what its goodbye logs. A client that simply left logs nothing
/// unless `log_disconnections` is on, and then gets none: making a span formats its fields for the
/// subscriber, about 4 % of a login's instructions under callgrind.
fn goodbye_span(app: &App, s: &Session, why: &Farewell) -> tracing::Span {
    let left = matches!(
        why,
        Farewell::Eof
            | Farewell::Terminate
            | Farewell::Ended(Disconnect::ClientClose | Disconnect::ClientEof)
    );
    if left && !app.config().general.log_disconnections {
        tracing::Span::none()
    } else {
        s.span()
    }
}

/// The end of a session: what the client is told, the disconnect line, the socket shut down.
async fn goodbye(app: Arc<App>, mut s: Session, why: Farewell) {
    let reason = session::farewell(&app, &mut s, why).await;
    app.events.disconnect(&reason);
    if app.config().general.log_disconnections {
        let age = s.started.elapsed().as_secs_f64();
        tracing::info!("closing because: {reason} (age={age:.0}s)");
    }
    let _ = tokio::io::AsyncWriteExt::shutdown(&mut s.stream).await;
}
