//! The lease driver: runs the [`Policy`] against the real world.
//!
//! [`Driver::run`] feeds the policy ticks (at [`Policy::next_wakeup`], at
//! least every 250 ms), probe results and operator commands, and carries
//! out the actions it returns, in order:
//!
//! * `ReadLease`, `AcquireLease`, `RenewLease` go to the repository's
//!   [`CompareAndSwap`] on `lease/active.json` as concurrent tasks, each
//!   bounded by the policy's `request_timeout`; their answers come back as
//!   events. The policy took `t_send` when it issued the write, before the
//!   request leaves, as the safety argument requires.
//! * `Fence`, `Unfence`, `Promote`, `CaptureFinalLsn`, `RunHook`,
//!   `Alert` and `ReleaseLease` go, in order, to one worker
//!   task that calls [`Actions`]; a release or a final-position read is
//!   sent only after the fence before it has returned. The outcomes of
//!   `Promote`, `Unfence` and `CaptureFinalLsn` go back to the policy as
//!   events: the site accepts traffic only once its database has answered
//!   that it is open. The loop itself never waits for I/O, so a slow
//!   promotion cannot delay a renewal or the fence at the lease deadline.
//! * `ReadReplayPosition` runs as a concurrent task bounded by the request
//!   timeout.
//! * `RestartLocal` (the watchdog's `on_restart` hooks) runs as a
//!   concurrent task too, so that a restart that takes seconds cannot hold
//!   up a fence queued behind it; its end goes back as
//!   [`Event::RestartResult`], after which a fenced site enforces its
//!   fence again.
//! * The wall clock ([`Clock::unix_millis`]) goes to the policy at start
//!   and every [`WALL_CLOCK_EVERY`], for the cooldown stamps.
//!
//! The state goes out through a [`tokio::sync::watch`] channel
//! ([`DriverHandle::subscribe`]). [`DriverHandle::may_accept_traffic`] is
//! evaluated against the clock *when asked*, not when the state was last
//! published, and is false as soon as the driver has stopped: this is what
//! `/active` must answer.
//!
//! Time comes from an injected [`Clock`]; [`BootClock`] reads Linux's
//! `CLOCK_BOOTTIME` (see its docs for why not `Instant`).
//!
//! How the agent hosts it:
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use warmspare_failover::actions::{Hooks, PostgresActions, SiteActions};
//! use warmspare_failover::driver::{BootClock, Driver, DriverConfig};
//! use warmspare_failover::policy::PolicyConfig;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let url = url::Url::from_directory_path(dir.path()).unwrap();
//! let store = warmspare_store::Store::open(&warmspare_store::StoreConfig::new(url.as_str()))?;
//! let actions = Arc::new(SiteActions {
//!     database: PostgresActions::new("postgres://postgres@127.0.0.1:1/app", "primary"),
//!     hooks: Hooks::from_config("primary", &Default::default()),
//! });
//! let config = DriverConfig::new(PolicyConfig::default(), "primary", "spare", true);
//! let driver = Driver::new(config, Arc::clone(store.cas()), actions, Arc::new(BootClock::new()))?;
//! let handle = driver.handle(); // for /active, /status, probes, commands
//! let shutdown = tokio::time::sleep(Duration::from_millis(50));
//! let task = tokio::spawn(driver.run(shutdown));
//! assert!(!handle.may_accept_traffic()); // fenced until it holds the lease
//! task.await??;
//! assert!(!handle.state().running && handle.current_epoch().is_none());
//! # Ok(()) }
//! ```

mod clock;
mod lease;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use warmspare_store::CompareAndSwap;
use warmspare_store::object_store::path::Path;

pub use clock::{BootClock, Clock, ManualClock};
pub use lease::{lease_store_config, read_lease};

use crate::actions::Actions;
use crate::policy::{
    Action, AlertKind, Command, Event, Health, LeaseRecord, Millis, Policy, PolicyConfig, Replay,
    Role, SiteIdentity,
};
use crate::{Error, Result};

/// The longest the driver sleeps between two looks at the clock (a cap on
/// [`Policy::next_wakeup`], against timers that stop during suspend).
pub const MAX_TICK: Duration = Duration::from_millis(250);

/// How often the driver tells the policy the wall-clock time.
pub const WALL_CLOCK_EVERY: Duration = Duration::from_secs(60);

/// How long [`Driver::run_with`] waits for a release on shutdown, in
/// request timeouts.
pub const RELEASE_WAIT: u32 = 2;

/// What [`Driver::run_with`] does with a held lease when shutdown comes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnShutdown {
    /// Nothing: the lease expires after `ttl + margin` at the peer (unless
    /// a restarted agent reclaims it first).
    #[default]
    Leave,
    /// Step down: fence, then release the lease so the peer may take it at
    /// once.
    Release,
    /// [`OnShutdown::Release`] only when the local service is judged
    /// healthy; otherwise [`OnShutdown::Leave`].
    ReleaseIfHealthy,
}

/// What a driver needs to know besides its collaborators.
#[derive(Debug, Clone)]
pub struct DriverConfig {
    /// Timing and guards.
    pub policy: PolicyConfig,
    /// This site, its peer, whether it creates the lease.
    pub identity: SiteIdentity,
    /// The lease object; [`warmspare_store::layout::lease`] by default.
    pub lease_path: Path,
}

impl DriverConfig {
    /// A configuration with the standard lease path and a random
    /// incarnation.
    pub fn new(policy: PolicyConfig, site: &str, peer: &str, initial_holder: bool) -> Self {
        DriverConfig {
            policy,
            identity: SiteIdentity::new(site, peer, initial_holder, rand_incarnation()),
            lease_path: warmspare_store::layout::lease(),
        }
    }
}

/// A number unique to this process start.
fn rand_incarnation() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.write_u32(std::process::id());
    h.finish()
}

/// The driver's state as last published; see [`DriverHandle`] for the
/// queries that must be answered against the clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverState {
    /// This site.
    pub site: String,
    /// Whether the driver loop runs.
    pub running: bool,
    /// The role when published.
    pub role: Role,
    /// End (exclusive, on the driver's clock) of the right to accept
    /// traffic; `None` when it has none.
    pub accepting_until: Option<Millis>,
    /// The epoch of the lease this site holds.
    pub epoch: Option<u64>,
    /// The site is fenced.
    pub fenced: bool,
    /// Maintenance pause.
    pub paused: bool,
    /// Local health as judged by the thresholds.
    pub local: Health,
    /// Peer health.
    pub peer: Health,
    /// The newest lease record known (held or observed).
    pub lease: Option<LeaseRecord>,
    /// For a holder: time left until it must fence, when published.
    pub time_left: Option<Duration>,
    /// For a standby: time until the observed lease may be taken over.
    pub takeover_in: Option<Duration>,
    /// Latest replication lag measurement.
    pub lag: Option<Duration>,
    /// For the successor of a switchover: the old holder's final WAL
    /// position that the local database must replay before it promotes.
    pub awaiting_lsn: Option<crate::policy::Lsn>,
    /// The latest replay position read while waiting for `awaiting_lsn`.
    pub replayed_lsn: Option<crate::policy::Lsn>,
    /// The driver's clock when this was published.
    pub at: Millis,
    /// The latest alert.
    pub last_alert: Option<(AlertKind, String)>,
}

impl DriverState {
    fn initial(site: &str) -> Self {
        DriverState {
            site: site.to_owned(),
            running: false,
            role: Role::Standby,
            accepting_until: None,
            epoch: None,
            fenced: true,
            paused: false,
            local: Health::Unknown,
            peer: Health::Unknown,
            lease: None,
            time_left: None,
            takeover_in: None,
            lag: None,
            awaiting_lsn: None,
            replayed_lsn: None,
            at: Millis::ZERO,
            last_alert: None,
        }
    }
}

/// The answer to an operator command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandReply {
    /// The policy took the command; the message says what happens next.
    Accepted(String),
    /// The policy refused it (a guard, wrong site, ...).
    Refused(String),
}

enum Input {
    Event(Event),
    Command(Command, oneshot::Sender<CommandReply>),
}

/// A cheap, cloneable handle on a driver: its state, the traffic gate,
/// probe results in, operator commands in. What the agent's `/active`,
/// `/standby`, `/status`, `/metrics` and `/failover` use.
#[derive(Debug, Clone)]
pub struct DriverHandle {
    state: watch::Receiver<DriverState>,
    inputs: mpsc::Sender<Input>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Input {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Input::Event(e) => write!(f, "{e:?}"),
            Input::Command(c, _) => write!(f, "{c:?}"),
        }
    }
}

impl DriverHandle {
    /// Whether this site may accept live traffic *now*: the driver runs and
    /// the clock has not reached the end of the current right.
    pub fn may_accept_traffic(&self) -> bool {
        if self.inputs.is_closed() {
            return false;
        }
        let state = self.state.borrow();
        state.running && state.accepting_until.is_some_and(|t| self.clock.now() < t)
    }

    /// The fencing token for writers: the epoch of the lease while this
    /// site may accept traffic, `None` otherwise.
    pub fn current_epoch(&self) -> Option<u64> {
        let epoch = self.state.borrow().epoch;
        epoch.filter(|_| self.may_accept_traffic())
    }

    /// The state as last published.
    pub fn state(&self) -> DriverState {
        self.state.borrow().clone()
    }

    /// A receiver that sees every published state.
    pub fn subscribe(&self) -> watch::Receiver<DriverState> {
        self.state.clone()
    }

    /// The driver's clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Delivers an observation (a probe result, a lag measurement).
    pub async fn send_event(&self, event: Event) -> Result<()> {
        self.inputs
            .send(Input::Event(event))
            .await
            .map_err(|_| Error::DriverStopped)
    }

    /// Delivers an operator command and waits for the policy's answer.
    pub async fn command(&self, command: Command) -> Result<CommandReply> {
        let (tx, rx) = oneshot::channel();
        self.inputs
            .send(Input::Command(command, tx))
            .await
            .map_err(|_| Error::DriverStopped)?;
        rx.await.map_err(|_| Error::DriverStopped)
    }
}

/// The lease driver of one site. Build with [`Driver::new`], take
/// [`Driver::handle`]s, then [`Driver::run`] it until shutdown.
pub struct Driver {
    policy: Policy,
    lease_path: Path,
    cas: Arc<dyn CompareAndSwap>,
    actions: Arc<dyn Actions>,
    clock: Arc<dyn Clock>,
    state: watch::Sender<DriverState>,
    inputs_tx: mpsc::Sender<Input>,
    inputs: mpsc::Receiver<Input>,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("site", &self.policy.status(Millis::ZERO).role)
            .field("lease_path", &self.lease_path)
            .finish_non_exhaustive()
    }
}

impl Driver {
    /// A driver for one site. Fails when the policy timing cannot be safe.
    ///
    /// `cas` should come from a store opened with [`lease_store_config`]
    /// (bounded retries). Only use a backend on which
    /// [`warmspare_store::probe_cas`] passed.
    pub fn new(
        config: DriverConfig,
        cas: Arc<dyn CompareAndSwap>,
        actions: Arc<dyn Actions>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self> {
        let site = config.identity.site.clone();
        let policy = Policy::new(config.policy, config.identity)?;
        let (state, _) = watch::channel(DriverState::initial(&site));
        let (inputs_tx, inputs) = mpsc::channel(256);
        Ok(Driver {
            policy,
            lease_path: config.lease_path,
            cas,
            actions,
            clock,
            state,
            inputs_tx,
            inputs,
        })
    }

    /// A handle on this driver (valid after `run` has started, and false /
    /// stopped once it has ended).
    pub fn handle(&self) -> DriverHandle {
        DriverHandle {
            state: self.state.subscribe(),
            inputs: self.inputs_tx.clone(),
            clock: Arc::clone(&self.clock),
        }
    }

    /// Runs until `shutdown` completes. On return the handle reports "not
    /// accepting"; the database is left as it is (the lease expires unless
    /// a restarted agent reclaims it in time). Same as
    /// [`Driver::run_with`] with [`OnShutdown::Leave`].
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<()> {
        self.run_with(shutdown, OnShutdown::Leave).await
    }

    /// Runs until `shutdown` completes, then does what `on_shutdown` says.
    ///
    /// With [`OnShutdown::Release`] (or [`OnShutdown::ReleaseIfHealthy`]
    /// and a local service judged healthy), a holder steps down
    /// ([`Command::Release`]): it fences itself, then writes the lease back
    /// released so that the peer may take it at once. The driver keeps
    /// serving events until the release has landed, or gave up, and for at
    /// most [`RELEASE_WAIT`] times the request timeout (the fence, then the
    /// write and one retry on a newer version). A site that does not hold
    /// the lease returns at once.
    pub async fn run_with(
        mut self,
        shutdown: impl Future<Output = ()>,
        on_shutdown: OnShutdown,
    ) -> Result<()> {
        let (work_tx, work_rx) = mpsc::unbounded_channel::<Action>();
        let worker = tokio::spawn(worker(
            work_rx,
            Arc::clone(&self.actions),
            Arc::clone(&self.cas),
            self.lease_path.clone(),
            self.policy.config().request_timeout,
            self.inputs_tx.clone(),
        ));
        // Only the handles keep the channel open from now on; the driver's
        // own sender would keep `is_closed` false forever.
        let events_tx = self.inputs_tx.clone();
        let now = self.clock.now();
        let mut actions = self.policy.start(now);
        let mut wall_sent = now;
        if let Some(unix_ms) = self.clock.unix_millis() {
            actions.extend(self.policy.step(Event::WallClock { unix_ms }, now));
        }
        self.dispatch(actions, &work_tx, &events_tx, None);
        self.publish(now, true);
        tokio::pin!(shutdown);
        loop {
            let now = self.clock.now();
            if now >= wall_sent + WALL_CLOCK_EVERY
                && let Some(unix_ms) = self.clock.unix_millis()
            {
                wall_sent = now;
                let actions = self.policy.step(Event::WallClock { unix_ms }, now);
                self.dispatch(actions, &work_tx, &events_tx, None);
            }
            let wake = self.policy.next_wakeup(now);
            let sleep = wake.saturating_since(now).min(MAX_TICK);
            let input = tokio::select! {
                biased;
                () = &mut shutdown => break,
                input = self.inputs.recv() => input,
                () = tokio::time::sleep(sleep) => None,
            };
            let now = self.clock.now();
            let (event, reply) = match input {
                None => (Event::Tick, None),
                Some(Input::Event(e)) => (e, None),
                Some(Input::Command(c, tx)) => (Event::Command(c), Some(tx)),
            };
            let actions = self.policy.step(event, now);
            self.dispatch(actions, &work_tx, &events_tx, reply);
            self.publish(now, true);
        }
        let now = self.clock.now();
        let release = match on_shutdown {
            OnShutdown::Leave => false,
            OnShutdown::Release => true,
            OnShutdown::ReleaseIfHealthy => self.policy.status(now).local == Health::Healthy,
        };
        if release && self.policy.epoch().is_some() {
            self.step_down(&work_tx, &events_tx).await;
        }
        let now = self.clock.now();
        self.publish(now, false);
        drop(work_tx);
        worker.abort();
        Ok(())
    }

    /// Sends [`Command::Release`] and serves events until the release is
    /// settled or the bounded wait is over.
    async fn step_down(
        &mut self,
        work_tx: &mpsc::UnboundedSender<Action>,
        events_tx: &mpsc::Sender<Input>,
    ) {
        let wait = self.policy.config().request_timeout * RELEASE_WAIT;
        let deadline = tokio::time::Instant::now() + wait;
        let now = self.clock.now();
        let actions = self.policy.step(Event::Command(Command::Release), now);
        self.dispatch(actions, work_tx, events_tx, None);
        self.publish(now, true);
        while self.policy.is_releasing() {
            let now = self.clock.now();
            let sleep = self
                .policy
                .next_wakeup(now)
                .saturating_since(now)
                .min(MAX_TICK);
            let input = tokio::select! {
                biased;
                () = tokio::time::sleep_until(deadline) => {
                    tracing::warn!(?wait, "the lease release did not finish in time; it expires instead");
                    break;
                }
                input = self.inputs.recv() => input,
                () = tokio::time::sleep(sleep) => None,
            };
            let now = self.clock.now();
            let (event, reply) = match input {
                None => (Event::Tick, None),
                Some(Input::Event(e)) => (e, None),
                // No new commands while stepping down: the site is leaving.
                Some(Input::Command(_, tx)) => {
                    let _ = tx.send(CommandReply::Refused("the driver is shutting down".into()));
                    continue;
                }
            };
            let actions = self.policy.step(event, now);
            self.dispatch(actions, work_tx, events_tx, reply);
            self.publish(now, true);
        }
    }

    fn publish(&self, now: Millis, running: bool) {
        let s = self.policy.status(now);
        let (site, last_alert) = {
            let current = self.state.borrow();
            (current.site.clone(), current.last_alert.clone())
        };
        self.state.send_replace(DriverState {
            site,
            running,
            role: s.role,
            accepting_until: if running {
                self.policy.accepting_until()
            } else {
                None
            },
            epoch: self.policy.epoch(),
            fenced: s.fenced,
            paused: s.paused,
            local: s.local,
            peer: s.peer,
            lease: s.lease,
            time_left: s.time_left,
            takeover_in: s.takeover_in,
            lag: s.lag,
            awaiting_lsn: s.awaiting_lsn,
            replayed_lsn: s.replayed_lsn,
            at: now,
            last_alert,
        });
    }

    fn dispatch(
        &self,
        actions: Vec<Action>,
        work: &mpsc::UnboundedSender<Action>,
        events: &mpsc::Sender<Input>,
        mut reply: Option<oneshot::Sender<CommandReply>>,
    ) {
        let timeout = self.policy.config().request_timeout;
        for action in actions {
            tracing::debug!(?action, "policy action");
            match action {
                Action::ReadLease => {
                    let (cas, path, tx) = (
                        Arc::clone(&self.cas),
                        self.lease_path.clone(),
                        events.clone(),
                    );
                    tokio::spawn(async move {
                        let event = lease::read_event(cas, path, timeout).await;
                        let _ = tx.send(Input::Event(event)).await;
                    });
                }
                Action::ReadReplayPosition => {
                    let (actions, tx) = (Arc::clone(&self.actions), events.clone());
                    tokio::spawn(async move {
                        let replay =
                            match tokio::time::timeout(timeout, actions.replay_position()).await {
                                Ok(Ok(replay)) => replay,
                                Ok(Err(error)) => {
                                    tracing::warn!(%error, "cannot read the replay position");
                                    Replay::Unknown
                                }
                                Err(_) => {
                                    tracing::warn!("reading the replay position timed out");
                                    Replay::Unknown
                                }
                            };
                        let _ = tx
                            .send(Input::Event(Event::ReplayPosition { replay }))
                            .await;
                    });
                }
                Action::RestartLocal { role, epoch } => {
                    let (actions, tx) = (Arc::clone(&self.actions), events.clone());
                    tokio::spawn(async move {
                        let ok = match actions.restart_local(role, epoch).await {
                            Ok(()) => true,
                            Err(error) => {
                                tracing::error!(%error, "the watchdog's restart failed");
                                false
                            }
                        };
                        let _ = tx.send(Input::Event(Event::RestartResult { ok })).await;
                    });
                }
                Action::AcquireLease { .. } | Action::RenewLease { .. } => {
                    let Some((request, record, condition)) = action.lease_write() else {
                        continue;
                    };
                    let (record, cas, path, tx) = (
                        record.clone(),
                        Arc::clone(&self.cas),
                        self.lease_path.clone(),
                        events.clone(),
                    );
                    tokio::spawn(async move {
                        let event =
                            lease::write_event(cas, path, timeout, request, record, condition)
                                .await;
                        let _ = tx.send(Input::Event(event)).await;
                    });
                }
                Action::Alert {
                    severity,
                    kind,
                    ref message,
                } => {
                    if let Some(tx) = reply.take_if(|_| {
                        matches!(kind, AlertKind::CommandAccepted | AlertKind::CommandRefused)
                    }) {
                        let _ = tx.send(if kind == AlertKind::CommandAccepted {
                            CommandReply::Accepted(message.clone())
                        } else {
                            CommandReply::Refused(message.clone())
                        });
                    }
                    if severity >= crate::policy::Severity::Warning {
                        self.state
                            .send_modify(|s| s.last_alert = Some((kind, message.clone())));
                    }
                    let _ = work.send(action);
                }
                other => {
                    let _ = work.send(other);
                }
            }
        }
        if let Some(tx) = reply {
            let _ = tx.send(CommandReply::Accepted("ok".into()));
        }
    }
}

/// Carries out the ordered actions one at a time.
async fn worker(
    mut work: mpsc::UnboundedReceiver<Action>,
    actions: Arc<dyn Actions>,
    cas: Arc<dyn CompareAndSwap>,
    path: Path,
    timeout: Duration,
    events: mpsc::Sender<Input>,
) {
    while let Some(action) = work.recv().await {
        let answer = |event: Event| {
            let events = events.clone();
            async move {
                let _ = events.send(Input::Event(event)).await;
            }
        };
        let result = match &action {
            Action::Fence { reason } => actions.fence(*reason).await,
            Action::Unfence { epoch } => {
                let result = actions.unfence(*epoch).await;
                let (epoch, ok) = (*epoch, result.is_ok());
                answer(Event::UnfenceResult { epoch, ok }).await;
                result
            }
            Action::Promote { epoch, trigger } => {
                let result = actions.promote(*epoch, *trigger).await;
                let (epoch, ok) = (*epoch, result.is_ok());
                answer(Event::PromoteResult { epoch, ok }).await;
                result
            }
            Action::CaptureFinalLsn => {
                let result = actions.final_lsn().await;
                let lsn = result.as_ref().ok().copied();
                answer(Event::FinalLsn { lsn }).await;
                result.map(|_| ())
            }
            Action::RunHook { kind, epoch } => actions.run_hook(*kind, *epoch).await,
            Action::Alert {
                severity,
                kind,
                message,
            } => {
                actions.alert(*severity, *kind, message).await;
                Ok(())
            }
            Action::ReleaseLease { .. } => {
                if let Some((request, record, condition)) = action.lease_write() {
                    let event = lease::write_event(
                        Arc::clone(&cas),
                        path.clone(),
                        timeout,
                        request,
                        record.clone(),
                        condition,
                    )
                    .await;
                    let _ = events.send(Input::Event(event)).await;
                }
                Ok(())
            }
            _ => Ok(()),
        };
        if let Err(error) = result {
            tracing::error!(?action, %error, "failover action failed");
        }
    }
}
