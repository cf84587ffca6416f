//! Panics caught at an actor's boundary. Tokio swallows a task's panic, so
//! without this a panic in a handler would end the actor silently: a
//! session would vanish without a word to its client, a shared actor (the
//! Router, the MUC service, a room) would stop serving everyone.
//!
//! It owns only catching, logging and counting. What happens next is the
//! actor's choice: a Session ends its stream with
//! `<internal-server-error/>`, a connection's task ends that connection,
//! the shared actors log and serve on (answering the request in hand with
//! a temporary failure).
//!
//! The log line never holds the panic's text unless it is a literal from
//! the source code: a formatted message may carry stanza content, and so
//! passwords or private messages. [`install_hook`] replaces Rust's default
//! panic hook, which would print any message to stderr, with one that logs
//! by the same rule.

use actix::prelude::*;
use std::any::Any;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::task::Poll;

/// Help texts of the panic metrics.
pub fn describe_metrics() {
    metrics::describe_counter!(
        "gatehouse_panics_total",
        "Panics caught in an actor's handler or a connection's task, by actor: session \
         (that session ends with internal-server-error), transport (that connection \
         ends), router, muc_service, muc_room, muc_gate, auth_pool, roster_cache (they \
         serve on; the request in hand fails temporarily)"
    );
}

/// What of a panic's payload may be logged: a literal from the source
/// code, never a formatted message.
fn printable(payload: &(dyn Any + Send)) -> &'static str {
    payload
        .downcast_ref::<&'static str>()
        .copied()
        .unwrap_or("(formatted message withheld)")
}

/// Replaces the process's panic hook with one that logs the panic's place
/// and thread at error level, and its message only by [`printable`]'s
/// rule. For the server binary; a library's tests keep Rust's hook.
pub fn install_hook() {
    std::panic::set_hook(Box::new(|info| {
        let place = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let thread = std::thread::current();
        tracing::error!(
            thread = thread.name().unwrap_or("unnamed"),
            place,
            message = printable(info.payload()),
            "panic"
        );
    }));
}

/// A handler panicked; the panic has been logged and counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a handler panicked")]
pub struct Panicked;

/// Runs `body`, catching a panic, which is logged at error level and
/// counted in `gatehouse_panics_total{actor}`. Whatever `body` had changed
/// before panicking stays changed: the caller must not trust that state
/// beyond what it needs to end or go on safely.
pub fn catch<T>(actor: &'static str, body: impl FnOnce() -> T) -> Result<T, Panicked> {
    catch_unwind(AssertUnwindSafe(body)).map_err(|payload| caught(actor, payload))
}

/// Logs and counts a panic caught in `actor`.
fn caught(actor: &'static str, payload: Box<dyn Any + Send>) -> Panicked {
    let message = printable(payload.as_ref());
    tracing::error!(actor, message, "panic caught in an actor's handler");
    metrics::counter!("gatehouse_panics_total", "actor" => actor).increment(1);
    Panicked
}

/// Runs `future` with every poll under [`catch`]: a panic in it ends the
/// future with `Err(Panicked)` (logged and counted) instead of unwinding
/// through the task that polls it. The future is dropped after a panic,
/// so what it held (a connection, a request's reply) is let go as on any
/// other end. For a spawned task, and under [`guarded_response`].
/// A combinator rather than an `async fn`, so the future is stored once:
/// an `async fn` would keep its argument and the pinned copy it polls,
/// doubling what every connection's task holds.
pub fn catch_future<F: Future>(
    actor: &'static str,
    future: F,
) -> impl Future<Output = Result<F::Output, Panicked>> {
    use futures_util::FutureExt;
    AssertUnwindSafe(future)
        .catch_unwind()
        .map(move |result| result.map_err(|payload| caught(actor, payload)))
}

/// A handler's plain future (a `ResponseFuture`, which actix runs apart
/// from the actor), built by `build` and polled under [`catch`]: after a
/// panic in either it resolves to `recover()`, the answer the caller gets
/// instead (a temporary failure), so no request in hand goes unanswered.
/// [`Guarded`] is the same for an actor future.
pub fn guarded_response<F>(
    actor: &'static str,
    build: impl FnOnce() -> F,
    recover: fn() -> F::Output,
) -> Pin<Box<dyn Future<Output = F::Output>>>
where
    F: Future + 'static,
{
    let built = catch(actor, build);
    Box::pin(async move {
        let output = match built {
            Ok(future) => catch_future(actor, future).await,
            Err(panicked) => Err(panicked),
        };
        output.unwrap_or_else(|Panicked| recover())
    })
}

/// A handler's actor future whose every poll runs under [`catch`], so the
/// continuations a handler schedules (after an auth check, a roster fetch)
/// are guarded like its body. After a panic it resolves to what `recover`
/// makes of the actor.
pub struct Guarded<A: Actor, T> {
    /// The `actor` label, as for [`catch`].
    actor: &'static str,
    /// The handler's future.
    inner: Pin<Box<dyn ActorFuture<A, Output = T>>>,
    /// The answer after a panic; it may also act on the actor (end a
    /// stream).
    recover: fn(&mut A, &mut A::Context) -> T,
}

impl<A: Actor, T> Guarded<A, T> {
    pub fn new(
        actor: &'static str,
        inner: Pin<Box<dyn ActorFuture<A, Output = T>>>,
        recover: fn(&mut A, &mut A::Context) -> T,
    ) -> Guarded<A, T> {
        Guarded {
            actor,
            inner,
            recover,
        }
    }
}

impl<A: Actor, T> ActorFuture<A> for Guarded<A, T> {
    type Output = T;

    fn poll(
        self: Pin<&mut Self>,
        act: &mut A,
        ctx: &mut A::Context,
        task: &mut std::task::Context<'_>,
    ) -> Poll<T> {
        // Every field is Unpin (the inner future is boxed).
        let this = self.get_mut();
        let inner = &mut this.inner;
        match catch(this.actor, || inner.as_mut().poll(act, ctx, task)) {
            Ok(poll) => poll,
            Err(Panicked) => Poll::Ready((this.recover)(act, ctx)),
        }
    }
}

/// For the guarded actors' unit tests: a metrics recorder that panics
/// where the code under test counts something, so that a panic strikes in
/// a real handler with no fault injection in the code itself. Install it
/// with `metrics::set_default_local_recorder`: actors started in an
/// `actix_rt::test` run on the test's thread.
#[cfg(test)]
pub(crate) mod test_support {
    use metrics::{
        Counter, CounterFn, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit,
    };
    use std::sync::Arc;

    /// Panics on every increment of the counter `name` (whose labels
    /// include `label`, a name and a value, when given); every other
    /// metric is a no-op.
    pub(crate) struct PanicOnIncrement {
        pub(crate) name: &'static str,
        pub(crate) label: Option<(&'static str, &'static str)>,
    }

    /// The counter that panics.
    struct Tripwire;

    impl CounterFn for Tripwire {
        fn increment(&self, _: u64) {
            panic!("injected by the test's recorder");
        }

        fn absolute(&self, _: u64) {}
    }

    impl Recorder for PanicOnIncrement {
        fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

        fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
            let trips = key.name() == self.name
                && self.label.is_none_or(|(label, value)| {
                    key.labels().any(|l| l.key() == label && l.value() == value)
                });
            if trips {
                Counter::from_arc(Arc::new(Tripwire))
            } else {
                Counter::noop()
            }
        }

        fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
            Gauge::noop()
        }

        fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
            Histogram::noop()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An actor whose handler's continuation panics when asked to.
    struct Probe;

    impl Actor for Probe {
        type Context = Context<Self>;
    }

    /// Answered after a turn of the actor's context; `true` panics there.
    #[derive(Message)]
    #[rtype(result = "&'static str")]
    struct Later(bool);

    impl Handler<Later> for Probe {
        type Result = ResponseActFuture<Self, &'static str>;

        fn handle(&mut self, Later(fail): Later, _: &mut Context<Self>) -> Self::Result {
            let continuation = actix::fut::ready(()).map(move |(), _: &mut Probe, _| {
                assert!(!fail, "continuation fault");
                "done"
            });
            Box::pin(Guarded::new("test", Box::pin(continuation), |_, _| {
                "recovered"
            }))
        }
    }

    #[actix_rt::test]
    async fn a_panic_in_a_continuation_is_recovered_and_the_actor_serves_on() {
        let probe = Probe.start();
        assert_eq!(probe.send(Later(true)).await.unwrap(), "recovered");
        assert_eq!(probe.send(Later(false)).await.unwrap(), "done");
    }

    /// Every connection's task is wrapped: the wrapper must not hold the
    /// future twice (as an `async fn` taking it would).
    #[test]
    fn the_guard_stores_its_future_once() {
        let held = async {
            let chunk = [0u8; 4096];
            tokio::task::yield_now().await;
            chunk.len()
        };
        let alone = std::mem::size_of_val(&held);
        let guarded = std::mem::size_of_val(&catch_future("test", held));
        assert!(
            guarded < alone + 64,
            "{guarded} bytes for a {alone}-byte future"
        );
    }

    #[actix_rt::test]
    async fn a_panic_in_a_plain_future_is_caught_and_answered() {
        // Panics after a turn, as a fetch's continuation would.
        let late = |fail: bool| async move {
            tokio::task::yield_now().await;
            assert!(!fail, "future fault");
            "done"
        };
        assert_eq!(catch_future("test", late(true)).await, Err(Panicked));
        assert_eq!(catch_future("test", late(false)).await, Ok("done"));
        let recover = || "recovered";
        let answer = guarded_response("test", || late(true), recover);
        assert_eq!(answer.await, "recovered");
        let answer = guarded_response(
            "test",
            || -> std::future::Ready<&str> { panic!("build fault") },
            recover,
        );
        assert_eq!(answer.await, "recovered");
        assert_eq!(
            guarded_response("test", || late(false), recover).await,
            "done"
        );
    }

    #[test]
    fn catch_returns_the_value_or_panicked() {
        assert_eq!(catch("test", || 1), Ok(1));
        assert_eq!(catch("test", || -> i32 { panic!("boom") }), Err(Panicked));
    }
}
