//! The AuthPool actor: admission, a bounded FIFO queue, dispatch to idle
//! workers, and the pool metrics. It is the same for every backend kind;
//! what a worker is (a child process, or an HTTP connection slot) is behind
//! the [`WorkerFactory`] and [`Worker`] traits.
//!
//! Backpressure is enforced outside the actor's mailbox: actix's `do_send`
//! ignores mailbox bounds, so [`PoolHandle::call`] counts the requests it
//! has admitted (in service or queued) and refuses one more than
//! `workers + queue` at once, without touching the actor.
//!
//! A running pool changes shape without failing an admitted request
//! ([`PoolHandle::tune`], [`PoolHandle::replace_workers`]): new slots
//! start, surplus ones stop once idle (a busy one finishes its request
//! first; a job offered to a slot that is stopping goes back to the front
//! of the queue), and a new kind of worker replaces the old one slot at a
//! time, each new one up before an old one stops.
//!
//! A panic in the actor's handlers or in a worker slot is caught, logged
//! and counted (`gatehouse_panics_total{actor="auth_pool"}`): the request
//! in hand fails as [`AuthError::Internal`], a temporary failure, and the
//! pool serves on.
//!
//! It must not know a backend's wire protocol.

use super::{AuthCommand, AuthError};
use crate::panic_guard;
use actix::prelude::*;
use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Restart backoff after a worker failed: doubles from the first value to
/// the second, and is reset by a good answer.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(5));

/// The `actor` label of panics caught in the pool and its worker slots.
const PANIC_LABEL: &str = "auth_pool";

/// Why a worker could not answer a request.
#[derive(Debug)]
pub(crate) enum WorkerFailure {
    /// It did not answer within the request timeout.
    Timeout,
    /// It exited, closed its output, or answered something invalid: it must
    /// be replaced. The text says which; it never contains the request.
    Broken(String),
    /// The request failed but the worker is fine (an HTTP 5xx, a refused
    /// connection): the caller gets this error, the worker serves on.
    Failed(AuthError),
    /// The worker was found broken before anything of the request was
    /// sent (a process with unread output): it is replaced, and the
    /// request goes back to the front of the queue for another worker.
    Unsent(String),
}

/// One worker: serves one request at a time.
pub(crate) trait Worker: Send + 'static {
    /// Whether a request that timed out leaves the worker unusable. True for
    /// a process (a late answer would be read as the next reply); false for
    /// an HTTP slot, whose abandoned request is simply dropped.
    const REPLACE_AFTER_TIMEOUT: bool;
    /// Serves one request.
    fn serve(
        &mut self,
        command: &AuthCommand,
    ) -> impl Future<Output = Result<bool, WorkerFailure>> + Send;
    /// Resolves if the worker breaks while idle (a process that exits or
    /// writes unsolicited output); pending forever otherwise. Must be
    /// cancel-safe.
    fn broken(&mut self) -> impl Future<Output = String> + Send;
    /// Ends the worker and waits until it is gone.
    fn stop(self) -> impl Future<Output = ()> + Send;
}

/// Starts workers of one kind.
pub(crate) trait WorkerFactory: Send + Sync + 'static {
    type Worker: Worker;
    /// Starts a new worker.
    fn start(&self) -> impl Future<Output = std::io::Result<Self::Worker>> + Send;
    /// What to call the worker in logs (e.g. the program name).
    fn describe(&self) -> String;
}

/// Settings of one pool, independent of the backend kind; all but
/// `backend` can change while it runs ([`PoolHandle::tune`]).
#[derive(Clone, Debug)]
pub(crate) struct PoolConfig {
    /// The `backend` label on every metric.
    pub backend: &'static str,
    /// Workers, each serving one request at a time.
    pub workers: usize,
    /// Requests that may wait for a free worker.
    pub queue: usize,
    /// How long a worker may take to answer before it is replaced.
    pub timeout: Duration,
    /// How long a request may wait in the queue.
    pub queue_timeout: Duration,
}

/// Checks a command before it is admitted: a request the backend's protocol
/// cannot carry (`InvalidRequest`) or does not have (`NotSupported`) is
/// refused without being queued.
pub(crate) type Validator = Arc<dyn Fn(&AuthCommand) -> Result<(), AuthError> + Send + Sync>;

/// A request on its way to a worker.
struct Job {
    /// What to ask the worker.
    command: AuthCommand,
    /// The caller's answer; closed when the caller went away, and then the
    /// job is never dispatched.
    reply: oneshot::Sender<Result<bool, AuthError>>,
    /// When it was admitted: its wait time, and its queue timeout.
    enqueued: Instant,
}

/// A cheap, cloneable handle used by sessions on every arbiter.
#[derive(Clone)]
pub struct PoolHandle {
    /// The pool actor, which queues and dispatches.
    addr: Addr<AuthPool>,
    /// The `backend` label on every metric.
    backend: &'static str,
    /// What every clone shares.
    shared: Arc<Shared>,
}

/// The state of a pool that is not the actor's: admission, the live
/// settings, the slots.
struct Shared {
    /// Requests admitted and not yet answered (in service or queued).
    admitted: AtomicUsize,
    /// `workers + queue`: more admitted requests than this are refused.
    capacity: AtomicUsize,
    /// How long a request may wait in the queue (the actor has its own
    /// copy); with the request timeout, the caller's deadline.
    queue_timeout: LiveDuration,
    /// Refuses what the backend's protocol cannot carry, before admission.
    validate: RwLock<Validator>,
    /// What every slot is started with.
    place: SlotPlace,
    /// The running slots and how to start another; one change at a time.
    slots: tokio::sync::Mutex<Slots>,
}

/// What every slot of a pool shares, whatever its kind of worker.
#[derive(Clone)]
struct SlotPlace {
    /// The pool actor, where a slot reports itself idle.
    pool: Addr<AuthPool>,
    /// The `backend` metric label.
    backend: &'static str,
    /// How long a worker may take to answer; read for every request.
    timeout: Arc<LiveDuration>,
    /// Ends every worker task on shutdown.
    stop: CancellationToken,
    /// The worker tasks, awaited on shutdown.
    workers: TaskTracker,
}

impl SlotPlace {
    /// What starts a slot of `factory`'s workers here.
    fn spawner<F: WorkerFactory>(&self, factory: F) -> Spawner {
        let (factory, place) = (Arc::new(factory), self.clone());
        Box::new(move || {
            let (state, watched) = watch::channel(SlotState::Starting);
            let retire = place.stop.child_token();
            let slot = Slot {
                factory: factory.clone(),
                pool: place.pool.clone(),
                backend: place.backend,
                timeout: place.timeout.clone(),
                stop: place.stop.clone(),
                retire: retire.clone(),
                state,
            };
            actix_rt::spawn(place.workers.track_future(slot.serve_on()));
            SlotHandle {
                retire,
                state: watched,
            }
        })
    }
}

/// A duration that a reload may change while others read it.
#[derive(Debug)]
struct LiveDuration(AtomicU64);

impl LiveDuration {
    fn new(value: Duration) -> LiveDuration {
        LiveDuration(AtomicU64::new(Self::nanos(value)))
    }

    fn nanos(value: Duration) -> u64 {
        u64::try_from(value.as_nanos()).unwrap_or(u64::MAX)
    }

    fn get(&self) -> Duration {
        Duration::from_nanos(self.0.load(Ordering::Acquire))
    }

    fn set(&self, value: Duration) {
        self.0.store(Self::nanos(value), Ordering::Release);
    }
}

/// Starts one more slot with the pool's current kind of worker.
type Spawner = Box<dyn Fn() -> SlotHandle + Send + Sync>;

/// The pool's slots, oldest first, and how to start another.
struct Slots {
    spawn: Spawner,
    running: Vec<SlotHandle>,
}

/// Where a slot is in its life, as its controller sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum SlotState {
    /// Its first worker is starting.
    Starting,
    /// A worker has been up (it may be restarting since).
    Up,
    /// Its first worker could not start; it retries with backoff.
    CannotStart(String),
    /// It stopped its worker and ended.
    Ended,
}

/// The controller's end of one slot.
struct SlotHandle {
    /// Cancelled to stop the slot once its worker is idle.
    retire: CancellationToken,
    /// What the slot reports about itself.
    state: watch::Receiver<SlotState>,
}

impl SlotHandle {
    /// Waits until the slot's first worker is up, it could not start, or
    /// `within` passed.
    async fn started(&mut self, within: Duration) -> Result<(), String> {
        let settled = self.state.wait_for(|state| *state != SlotState::Starting);
        match tokio::time::timeout(within, settled).await {
            Err(_) => Err(format!("no worker up within {within:?}")),
            Ok(Err(_)) => Err("the slot ended".into()),
            Ok(Ok(state)) => match &*state {
                SlotState::CannotStart(why) => Err(why.clone()),
                SlotState::Ended => Err("the slot ended".into()),
                _ => Ok(()),
            },
        }
    }

    /// Stops the slot (once its worker is idle) and waits until it ended.
    async fn retire(mut self) {
        self.retire.cancel();
        let _ = self
            .state
            .wait_for(|state| *state == SlotState::Ended)
            .await;
    }
}

/// Gives the admission slot back however the call ends (even if the
/// caller's future is dropped).
struct Admission(Arc<Shared>);

impl Drop for Admission {
    fn drop(&mut self) {
        self.0.admitted.fetch_sub(1, Ordering::AcqRel);
    }
}

impl PoolHandle {
    /// Starts the pool actor and one task per worker on the current actix
    /// arbiter.
    pub(crate) fn start<F: WorkerFactory>(
        config: PoolConfig,
        factory: F,
        validate: Validator,
    ) -> PoolHandle {
        let backend = config.backend;
        let addr = AuthPool {
            backend,
            queue: VecDeque::new(),
            queue_capacity: config.queue,
            queue_timeout: config.queue_timeout,
            idle: VecDeque::new(),
            expiry: None,
            shut_down: false,
        }
        .start();
        metrics::gauge!("gatehouse_auth_queue_depth", "backend" => backend).set(0.0);
        metrics::gauge!("gatehouse_auth_busy_workers", "backend" => backend).increment(0.0);
        metrics::gauge!("gatehouse_auth_workers", "backend" => backend).increment(0.0);
        // Counters exist from the start, so dashboards and alerts see a 0
        // rather than no data before the first event.
        for reason in [
            "queue_full",
            "queue_timeout",
            "invalid_request",
            "not_supported",
            "shut_down",
            "deadline",
        ] {
            metrics::counter!("gatehouse_auth_rejected_total", "backend" => backend, "reason" => reason).absolute(0);
        }
        metrics::counter!("gatehouse_auth_timeouts_total", "backend" => backend).absolute(0);
        metrics::counter!("gatehouse_auth_process_restarts_total", "backend" => backend)
            .absolute(0);
        let place = SlotPlace {
            pool: addr.clone(),
            backend,
            timeout: Arc::new(LiveDuration::new(config.timeout)),
            stop: CancellationToken::new(),
            workers: TaskTracker::new(),
        };
        let spawn = place.spawner(factory);
        let running = (0..config.workers).map(|_| spawn()).collect();
        PoolHandle {
            addr,
            backend,
            shared: Arc::new(Shared {
                admitted: AtomicUsize::new(0),
                capacity: AtomicUsize::new(config.workers + config.queue),
                queue_timeout: LiveDuration::new(config.queue_timeout),
                validate: RwLock::new(validate),
                place,
                slots: tokio::sync::Mutex::new(Slots { spawn, running }),
            }),
        }
    }

    /// Changes the pool's size, queue and timeouts while it serves. New
    /// slots start, and the admission capacity grows only once their
    /// workers are up (or could not start within the request timeout), so
    /// a request admitted on their account finds room; surplus slots (the
    /// newest) stop once idle, a busy one after its request, and this
    /// waits until they are gone. No admitted request fails because of it.
    pub(crate) async fn tune(&self, config: &PoolConfig) {
        let shared = &self.shared;
        let mut slots = shared.slots.lock().await;
        shared.place.timeout.set(config.timeout);
        shared.queue_timeout.set(config.queue_timeout);
        let capacity = config.workers + config.queue;
        if capacity < shared.capacity.load(Ordering::Acquire) {
            shared.capacity.store(capacity, Ordering::Release);
        }
        let _ = self
            .addr
            .send(Tune {
                queue: config.queue,
                queue_timeout: config.queue_timeout,
            })
            .await;
        let mut new = Vec::new();
        while slots.running.len() + new.len() < config.workers {
            new.push((slots.spawn)());
        }
        for slot in &mut new {
            if let Err(why) = slot.started(config.timeout).await {
                tracing::warn!(backend = self.backend, reason = %why, "new auth worker not up yet");
            }
        }
        slots.running.extend(new);
        shared.capacity.store(capacity, Ordering::Release);
        let keep = config.workers.min(slots.running.len());
        let surplus = slots.running.split_off(keep);
        futures_util::future::join_all(surplus.into_iter().map(SlotHandle::retire)).await;
    }

    /// Replaces every worker with one of `factory`'s, one slot at a time:
    /// a new slot's worker is up before an old slot stops (once idle; a
    /// busy one finishes its request first), so never fewer workers serve
    /// than configured. If the first new worker cannot start (within the
    /// request timeout), nothing changed and the reason is returned; a
    /// later one that cannot start keeps retrying with backoff, as after
    /// any worker failure, and the rollout goes on. `validate` checks
    /// requests from the end of the rollout on.
    pub(crate) async fn replace_workers<F: WorkerFactory>(
        &self,
        factory: F,
        validate: Validator,
    ) -> Result<(), String> {
        let mut slots = self.shared.slots.lock().await;
        let spawn = self.shared.place.spawner(factory);
        let within = self.shared.place.timeout.get();
        let mut old = std::mem::take(&mut slots.running).into_iter();
        let mut replaced = Vec::with_capacity(old.len());
        while let Some(old_slot) = old.next() {
            let mut new = spawn();
            if let Err(why) = new.started(within).await {
                if replaced.is_empty() {
                    new.retire().await;
                    slots.running = std::iter::once(old_slot).chain(old).collect();
                    return Err(why);
                }
                tracing::warn!(backend = self.backend, reason = %why, "new auth worker not up yet");
            }
            replaced.push(new);
            old_slot.retire().await;
        }
        slots.running = replaced;
        slots.spawn = spawn;
        *self
            .shared
            .validate
            .write()
            .unwrap_or_else(PoisonError::into_inner) = validate;
        Ok(())
    }

    /// Waits until every slot's first worker is up; the first that could
    /// not start (within the request timeout) is the error.
    pub async fn started(&self) -> Result<(), String> {
        let within = self.shared.place.timeout.get();
        let mut slots = self.shared.slots.lock().await;
        for slot in &mut slots.running {
            slot.started(within).await?;
        }
        Ok(())
    }

    /// Requests admitted and not yet answered.
    pub(crate) fn in_flight(&self) -> usize {
        self.shared.admitted.load(Ordering::Acquire)
    }

    /// Whether `other` is a handle of this very pool.
    pub(crate) fn same_pool(&self, other: &PoolHandle) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }

    /// The longest a request admitted now can take to be answered.
    pub(crate) fn longest_wait(&self) -> Duration {
        self.shared.queue_timeout.get() + self.shared.place.timeout.get() + Duration::from_secs(1)
    }

    /// The `backend` metric label.
    pub fn backend(&self) -> &'static str {
        self.backend
    }

    /// Asks the backend. `Ok` is its yes or no; every error but
    /// `InvalidRequest` and `NotSupported` is temporary. Never waits longer
    /// than the queue timeout plus the request timeout (plus a margin).
    pub async fn call(&self, command: AuthCommand) -> Result<bool, AuthError> {
        let validate = self
            .shared
            .validate
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Err(error) = validate(&command) {
            self.rejected(match error {
                AuthError::NotSupported => "not_supported",
                _ => "invalid_request",
            });
            return Err(error);
        }
        let shared = &self.shared;
        if shared.place.stop.is_cancelled() {
            self.rejected("shut_down");
            return Err(AuthError::ShutDown);
        }
        if shared.admitted.fetch_add(1, Ordering::AcqRel) >= shared.capacity.load(Ordering::Acquire)
        {
            shared.admitted.fetch_sub(1, Ordering::AcqRel);
            self.rejected("queue_full");
            return Err(AuthError::QueueFull);
        }
        let _admission = Admission(shared.clone());
        // Longest time a caller can wait: queue timeout plus request
        // timeout, plus a margin for the actor's own scheduling.
        let deadline = self.longest_wait();
        let (reply, answer) = oneshot::channel();
        self.addr.do_send(Submit(Job {
            command,
            reply,
            enqueued: Instant::now(),
        }));
        match tokio::time::timeout(deadline, answer).await {
            Ok(Ok(result)) => result,
            // The pool dropped the request: it is shutting down, or a
            // panic in the pool (caught, logged and counted) unwound with
            // the request in hand.
            Ok(Err(_)) if shared.place.stop.is_cancelled() => Err(AuthError::ShutDown),
            Ok(Err(_)) => Err(AuthError::Internal),
            // Every request the pool holds is bounded by the timeouts, so
            // the pool itself is stalled. Dropping `answer` tells it that
            // nobody waits for this request any more.
            Err(_) => {
                self.rejected("deadline");
                Err(AuthError::DeadlinePassed)
            }
        }
    }

    fn rejected(&self, reason: &'static str) {
        metrics::counter!("gatehouse_auth_rejected_total", "backend" => self.backend, "reason" => reason).increment(1);
    }

    /// Refuses new calls, fails queued ones, ends every worker and waits
    /// until each is gone.
    pub async fn shutdown(&self) {
        self.shared.place.stop.cancel();
        let _ = self.addr.send(Shutdown).await;
        self.shared.place.workers.close();
        self.shared.place.workers.wait().await;
    }
}

/// The queue and the idle workers.
pub(crate) struct AuthPool {
    /// The `backend` label on the pool's metrics.
    backend: &'static str,
    /// Waiting requests, oldest first.
    queue: VecDeque<Job>,
    /// The most requests [`AuthPool::queue`] may hold.
    queue_capacity: usize,
    /// How long a request may wait before it fails with `QueueTimeout`.
    queue_timeout: Duration,
    /// Idle workers, each waiting on its own channel for one job.
    idle: VecDeque<oneshot::Sender<Job>>,
    /// The one timer that fails the queue's oldest request when its time
    /// is up: a timer per request would be polled on every message.
    expiry: Option<SpawnHandle>,
    /// Set by [`Shutdown`]: nothing is queued or dispatched any more.
    shut_down: bool,
}

impl Actor for AuthPool {
    type Context = Context<Self>;
}

impl AuthPool {
    fn set_queue_gauge(&self) {
        metrics::gauge!("gatehouse_auth_queue_depth", "backend" => self.backend)
            .set(self.queue.len() as f64);
    }

    /// Hands `job` to an idle worker, or gives it back if none is idle. A
    /// job whose caller went away is dropped instead: nobody waits for it.
    fn dispatch(&mut self, mut job: Job) -> Option<Job> {
        if job.reply.is_closed() {
            return None;
        }
        while let Some(worker) = self.idle.pop_front() {
            let waited = job.enqueued.elapsed().as_secs_f64();
            match worker.send(job) {
                Ok(()) => {
                    metrics::histogram!("gatehouse_auth_wait_seconds", "backend" => self.backend)
                        .record(waited);
                    return None;
                }
                // That worker broke while idle: try the next.
                Err(back) => job = back,
            }
        }
        Some(job)
    }

    /// Queues a job that found no idle worker: at the back (a new request)
    /// or at the front (one that already waited).
    fn enqueue(&mut self, job: Job, front: bool, ctx: &mut Context<Self>) {
        if front {
            self.queue.push_front(job);
            // The front changed: its deadline may come sooner.
            return self.expire(ctx);
        }
        if self.queue.len() >= self.queue_capacity {
            // Callers that went away still hold a place: free them first.
            self.queue.retain(|queued| !queued.reply.is_closed());
            if self.queue.len() >= self.queue_capacity {
                // Admission counting makes this rare: it happens while
                // workers are down and their share of the capacity is not.
                return self.reject(job, AuthError::QueueFull, "queue_full");
            }
        }
        self.queue.push_back(job);
        self.set_queue_gauge();
        if self.expiry.is_none() {
            self.expire(ctx);
        }
    }

    /// Fails every queued request that has waited `queue_timeout`, oldest
    /// first, and sets the timer for the next one.
    fn expire(&mut self, ctx: &mut Context<Self>) {
        if let Some(timer) = self.expiry.take() {
            ctx.cancel_future(timer);
        }
        while let Some(oldest) = self.queue.front() {
            match self.queue_timeout.checked_sub(oldest.enqueued.elapsed()) {
                Some(left) if !left.is_zero() => {
                    self.expiry = Some(ctx.run_later(left, |pool, ctx| {
                        let _ = panic_guard::catch(PANIC_LABEL, || {
                            pool.expiry = None;
                            pool.expire(ctx);
                        });
                    }));
                    break;
                }
                _ => {
                    let job = self.queue.pop_front().expect("the queue has a front");
                    self.reject(job, AuthError::QueueTimeout, "queue_timeout");
                }
            }
        }
        self.set_queue_gauge();
    }

    /// Hands `job` to an idle worker, or queues it (at the front when
    /// `front`); refuses it while shutting down.
    fn admit(&mut self, job: Job, front: bool, ctx: &mut Context<Self>) {
        if self.shut_down {
            return self.reject(job, AuthError::ShutDown, "shut_down");
        }
        if let Some(job) = self.dispatch(job) {
            self.enqueue(job, front, ctx);
        }
    }

    fn reject(&self, job: Job, error: AuthError, reason: &'static str) {
        metrics::counter!("gatehouse_auth_rejected_total", "backend" => self.backend, "reason" => reason).increment(1);
        let _ = job.reply.send(Err(error));
    }
}

#[derive(Message)]
#[rtype(result = "()")]
struct Submit(Job);

impl Handler<Submit> for AuthPool {
    type Result = ();

    /// Every handler (and the queue's timer) runs under the panic guard,
    /// as the Router's do: a panic drops the job in hand, whose caller then
    /// gets [`AuthError::Internal`], and the pool serves on.
    fn handle(&mut self, Submit(job): Submit, ctx: &mut Self::Context) {
        let _ = panic_guard::catch(PANIC_LABEL, || self.admit(job, false, ctx));
    }
}

/// A worker is idle and waits for a job on `0`.
#[derive(Message)]
#[rtype(result = "()")]
struct Ready(oneshot::Sender<Job>);

impl Handler<Ready> for AuthPool {
    type Result = ();

    fn handle(&mut self, Ready(worker): Ready, _: &mut Self::Context) {
        let _ = panic_guard::catch(PANIC_LABEL, || {
            if self.shut_down {
                return;
            }
            // Workers that broke while idle left their channel behind.
            self.idle.retain(|idle| !idle.is_closed());
            self.idle.push_back(worker);
            while let Some(job) = self.queue.pop_front() {
                // The timer may not have fired yet: a request never leaves
                // the queue for a worker after its time is up.
                if job.enqueued.elapsed() >= self.queue_timeout {
                    self.reject(job, AuthError::QueueTimeout, "queue_timeout");
                    continue;
                }
                if let Some(job) = self.dispatch(job) {
                    self.queue.push_front(job);
                    break;
                }
            }
            self.set_queue_gauge();
        });
    }
}

/// A job a worker received but never started, because it broke first.
#[derive(Message)]
#[rtype(result = "()")]
struct Requeue(Job);

impl Handler<Requeue> for AuthPool {
    type Result = ();

    fn handle(&mut self, Requeue(job): Requeue, ctx: &mut Self::Context) {
        // It already waited: it goes first, for what is left of its queue
        // time.
        let _ = panic_guard::catch(PANIC_LABEL, || self.admit(job, true, ctx));
    }
}

#[derive(Message)]
#[rtype(result = "()")]
struct Shutdown;

impl Handler<Shutdown> for AuthPool {
    type Result = ();

    fn handle(&mut self, _: Shutdown, _: &mut Self::Context) {
        self.shut_down = true;
        let _ = panic_guard::catch(PANIC_LABEL, || {
            self.idle.clear();
            for job in std::mem::take(&mut self.queue) {
                self.reject(job, AuthError::ShutDown, "shut_down");
            }
            self.set_queue_gauge();
        });
    }
}

/// New queue settings: a shorter queue refuses new requests until it is
/// short enough, and never drops one it holds.
#[derive(Message)]
#[rtype(result = "()")]
struct Tune {
    queue: usize,
    queue_timeout: Duration,
}

impl Handler<Tune> for AuthPool {
    type Result = ();

    fn handle(&mut self, tune: Tune, ctx: &mut Self::Context) {
        let _ = panic_guard::catch(PANIC_LABEL, || {
            self.queue_capacity = tune.queue;
            self.queue_timeout = tune.queue_timeout;
            // The oldest request's deadline moved.
            self.expire(ctx);
        });
    }
}

/// One worker position in the pool: keeps a worker running, restarting it
/// with backoff, and serves the jobs the pool hands it.
struct Slot<F: WorkerFactory> {
    /// Starts (and restarts) this slot's worker.
    factory: Arc<F>,
    /// Where the slot reports itself idle and gets its jobs.
    pool: Addr<AuthPool>,
    /// The `backend` label on the slot's metrics.
    backend: &'static str,
    /// How long the worker may take to answer one request (read for each).
    timeout: Arc<LiveDuration>,
    /// Cancelled by shutdown: the slot stops its worker and ends, failing
    /// a request in service.
    stop: CancellationToken,
    /// Cancelled by shutdown or when the pool no longer needs the slot:
    /// it ends once its worker is idle.
    retire: CancellationToken,
    /// Where the slot says how it is doing.
    state: watch::Sender<SlotState>,
}

/// One unit of a gauge while it is held, given back when dropped: also
/// when a panic unwinds the slot.
struct GaugeUnit(metrics::Gauge);

impl GaugeUnit {
    fn hold(gauge: metrics::Gauge) -> GaugeUnit {
        gauge.increment(1.0);
        GaugeUnit(gauge)
    }
}

impl Drop for GaugeUnit {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

impl<F: WorkerFactory> Slot<F> {
    /// Runs the slot until shutdown. A panic in it is caught, logged and
    /// counted; unwinding drops its worker (a process is killed) and the
    /// request in hand (its caller gets [`AuthError::Internal`]), and the
    /// slot starts over with a fresh worker, as after a worker failure.
    async fn serve_on(self) {
        self.serve_until_retired().await;
        self.state.send_replace(SlotState::Ended);
    }

    async fn serve_until_retired(&self) {
        while panic_guard::catch_future(PANIC_LABEL, self.run())
            .await
            .is_err()
        {
            tracing::warn!(
                backend = self.backend,
                worker = %self.factory.describe(),
                retry_in = ?BACKOFF.0,
                "restarting auth worker after a panic"
            );
            metrics::counter!("gatehouse_auth_process_restarts_total", "backend" => self.backend)
                .increment(1);
            tokio::select! {
                _ = self.retire.cancelled() => return,
                _ = tokio::time::sleep(BACKOFF.0) => {}
            }
        }
    }

    async fn run(&self) {
        let mut backoff = BACKOFF.0;
        while !self.retire.is_cancelled() {
            let worker = tokio::select! {
                _ = self.retire.cancelled() => return,
                started = self.factory.start() => started,
            };
            let failure = match worker {
                Ok(worker) => {
                    self.state.send_replace(SlotState::Up);
                    let up = GaugeUnit::hold(
                        metrics::gauge!("gatehouse_auth_workers", "backend" => self.backend),
                    );
                    let failure = self.serve(worker, &mut backoff).await;
                    drop(up);
                    match failure {
                        Some(failure) => failure,
                        None => return, // stopped
                    }
                }
                Err(error) => {
                    let why = format!("cannot start: {error}");
                    self.state.send_if_modified(|state| {
                        let first = *state == SlotState::Starting;
                        if first {
                            *state = SlotState::CannotStart(why.clone());
                        }
                        first
                    });
                    why
                }
            };
            tracing::warn!(
                backend = self.backend,
                worker = %self.factory.describe(),
                reason = %failure,
                retry_in = ?backoff,
                "restarting auth worker"
            );
            metrics::counter!("gatehouse_auth_process_restarts_total", "backend" => self.backend)
                .increment(1);
            tokio::select! {
                _ = self.retire.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(BACKOFF.1);
        }
    }

    /// Serves jobs until the worker fails (returns why), or the slot is
    /// retired or the pool stops (returns `None`). The worker is stopped
    /// either way.
    async fn serve(&self, mut worker: F::Worker, backoff: &mut Duration) -> Option<String> {
        loop {
            let (offer, mut take) = oneshot::channel();
            self.pool.do_send(Ready(offer));
            let job = tokio::select! {
                // A broken worker must not take a job that arrives with
                // the news, and retirement (or shutdown) comes before
                // either.
                biased;
                _ = self.retire.cancelled() => Err(None),
                reason = worker.broken() => Err(Some(reason)),
                job = &mut take => job.map_err(|_| None),
            };
            let job = match job {
                Ok(job) => job,
                Err(reason) => {
                    // No job can arrive any more; one that came just now
                    // goes back to the pool, first in line.
                    take.close();
                    if let Ok(job) = take.try_recv() {
                        self.pool.do_send(Requeue(job));
                    }
                    worker.stop().await;
                    return reason;
                }
            };
            if job.reply.is_closed() {
                continue; // its caller went away on the way here
            }
            let busy = GaugeUnit::hold(
                metrics::gauge!("gatehouse_auth_busy_workers", "backend" => self.backend),
            );
            let started = Instant::now();
            let timeout = self.timeout.get();
            let served = tokio::select! {
                _ = self.stop.cancelled() => None,
                served = tokio::time::timeout(timeout, worker.serve(&job.command)) => Some(served),
            };
            drop(busy);
            let outcome = match served {
                // Shutting down: do not wait for a slow answer.
                None => {
                    let _ = job.reply.send(Err(AuthError::ShutDown));
                    worker.stop().await;
                    return None;
                }
                Some(Ok(outcome)) => outcome,
                Some(Err(_)) => Err(WorkerFailure::Timeout),
            };
            let result = match &outcome {
                Ok(true) => Some("success"),
                Ok(false) => Some("failure"),
                Err(WorkerFailure::Timeout) => Some("timeout"),
                // Nothing was asked: there is no request to time.
                Err(WorkerFailure::Unsent(_)) => None,
                Err(_) => Some("error"),
            };
            if let Some(result) = result {
                metrics::histogram!("gatehouse_auth_request_duration_seconds", "backend" => self.backend, "result" => result)
                    .record(started.elapsed().as_secs_f64());
            }
            let replace = match outcome {
                Ok(answer) => {
                    *backoff = BACKOFF.0;
                    let _ = job.reply.send(Ok(answer));
                    None
                }
                Err(WorkerFailure::Failed(error)) => {
                    let _ = job.reply.send(Err(error));
                    None
                }
                Err(WorkerFailure::Timeout) => {
                    metrics::counter!("gatehouse_auth_timeouts_total", "backend" => self.backend)
                        .increment(1);
                    let _ = job.reply.send(Err(AuthError::Timeout));
                    F::Worker::REPLACE_AFTER_TIMEOUT
                        .then(|| format!("no answer within {timeout:?}"))
                }
                Err(WorkerFailure::Broken(reason)) => {
                    let _ = job
                        .reply
                        .send(Err(AuthError::BackendFailed(reason.clone())));
                    Some(reason)
                }
                Err(WorkerFailure::Unsent(reason)) => {
                    // The request waits for the next worker, first in line.
                    self.pool.do_send(Requeue(job));
                    Some(reason)
                }
            };
            if let Some(reason) = replace {
                // Killing the worker also discards any late answer: the
                // next request goes to a fresh one.
                worker.stop().await;
                return Some(reason);
            }
        }
    }
}

/// Help texts for the pool metrics.
pub fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_gauge!(
        "gatehouse_auth_queue_depth",
        "Auth requests waiting for a free worker"
    );
    describe_gauge!(
        "gatehouse_auth_busy_workers",
        "Auth workers serving a request"
    );
    describe_gauge!(
        "gatehouse_auth_workers",
        "Auth workers up (processes running)"
    );
    describe_histogram!(
        "gatehouse_auth_wait_seconds",
        Unit::Seconds,
        "Time an auth request waited in the queue before a worker took it"
    );
    describe_histogram!(
        "gatehouse_auth_request_duration_seconds",
        Unit::Seconds,
        "Time a worker took to answer, by result: success, failure, error, timeout"
    );
    describe_counter!(
        "gatehouse_auth_rejected_total",
        "Auth requests refused without an answer, by reason: queue_full, queue_timeout, invalid_request, not_supported, shut_down, deadline"
    );
    describe_counter!(
        "gatehouse_auth_timeouts_total",
        "Auth requests a worker did not answer in time"
    );
    describe_counter!(
        "gatehouse_auth_process_restarts_total",
        "Auth workers restarted after they exited, hung, answered garbage, could not start or panicked"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Password;
    use crate::panic_guard::test_support::PanicOnIncrement;

    /// A worker that says yes: at once, or after a while for user `slow`.
    /// For user `boom` it panics.
    struct Nod;

    impl Worker for Nod {
        const REPLACE_AFTER_TIMEOUT: bool = false;

        async fn serve(&mut self, command: &AuthCommand) -> Result<bool, WorkerFailure> {
            match command.parts().0 {
                "slow" => tokio::time::sleep(Duration::from_millis(300)).await,
                "boom" => panic!("worker fault"),
                _ => {}
            }
            Ok(true)
        }

        async fn broken(&mut self) -> String {
            std::future::pending().await
        }

        async fn stop(self) {}
    }

    struct Nods;

    impl WorkerFactory for Nods {
        type Worker = Nod;

        async fn start(&self) -> std::io::Result<Nod> {
            Ok(Nod)
        }

        fn describe(&self) -> String {
            "nod".into()
        }
    }

    fn auth(user: &str) -> AuthCommand {
        AuthCommand::Auth {
            user: user.into(),
            host: "localhost".into(),
            password: Password::new("wrong"),
        }
    }

    /// A panic in a worker slot fails the request it serves temporarily;
    /// the slot starts over with a fresh worker and serves the next ones.
    #[actix_rt::test]
    async fn a_panic_in_a_worker_slot_fails_its_request_temporarily_and_the_slot_starts_over() {
        let config = PoolConfig {
            backend: "test",
            workers: 1,
            queue: 4,
            timeout: Duration::from_secs(5),
            queue_timeout: Duration::from_secs(5),
        };
        let pool = PoolHandle::start(config, Nods, Arc::new(|_: &AuthCommand| Ok(())));
        assert_eq!(pool.call(auth("boom")).await, Err(AuthError::Internal));
        assert_eq!(pool.call(auth("after")).await, Ok(true));
        pool.shutdown().await;
    }

    /// A panic in the pool's queue timer strikes while it rejects a
    /// request that waited too long: that request is answered with a
    /// temporary error all the same (never a yes or no), and the pool
    /// serves the next ones.
    #[actix_rt::test]
    async fn a_panic_in_the_pool_fails_the_request_in_hand_temporarily_and_the_pool_serves_on() {
        let recorder = PanicOnIncrement {
            name: "gatehouse_auth_rejected_total",
            label: Some(("reason", "queue_timeout")),
        };
        let _recorder = metrics::set_default_local_recorder(&recorder);
        let config = PoolConfig {
            backend: "test",
            workers: 1,
            queue: 4,
            timeout: Duration::from_secs(5),
            queue_timeout: Duration::from_millis(50),
        };
        let pool = PoolHandle::start(config, Nods, Arc::new(|_: &AuthCommand| Ok(())));
        // The worker is up.
        assert_eq!(pool.call(auth("warm")).await, Ok(true));

        let busy = actix_rt::spawn({
            let pool = pool.clone();
            async move { pool.call(auth("slow")).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        // It waits behind the slow one, past its queue timeout: the pool
        // panics rejecting it.
        let failed = pool.call(auth("queued")).await;
        assert_eq!(failed, Err(AuthError::Internal));
        assert!(failed.unwrap_err().is_temporary());

        assert_eq!(busy.await.unwrap(), Ok(true));
        assert_eq!(pool.call(auth("after")).await, Ok(true));
        pool.shutdown().await;
    }
}
