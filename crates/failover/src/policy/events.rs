//! What goes into the policy ([`Event`]) and what comes out ([`Action`]).

use std::fmt;
use std::time::Duration;

use super::{Health, LeaseRecord, Lsn, Millis, Replay, RequestId, Target, Version, WriteCondition};

/// Something the driver observed, fed to [`Policy::step`](super::Policy::step)
/// together with the time it was observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A timer fired; nothing else happened. Drivers tick at
    /// [`Policy::next_wakeup`](super::Policy::next_wakeup) or at a short
    /// fixed period.
    Tick,
    /// One probe result for a target.
    Probe {
        /// What was probed.
        target: Target,
        /// Whether the probe succeeded within its timeout.
        ok: bool,
    },
    /// The answer to a [`Action::ReadLease`]: the lease as it is at the
    /// repository, or `None` when the object does not exist.
    LeaseObserved {
        /// The version and record read.
        lease: Option<(Version, LeaseRecord)>,
    },
    /// A [`Action::ReadLease`] failed (unreachable, timeout, unparseable).
    LeaseReadFailed,
    /// The outcome of a lease write.
    LeaseWriteResult {
        /// The id from the write action.
        request: RequestId,
        /// What the repository answered.
        outcome: WriteOutcome,
    },
    /// A measurement of how far this site's copy is behind: replay lag of a
    /// standby or the age of the newest restored recovery point.
    ReplicationLag {
        /// The lag at the moment of measurement.
        lag: Duration,
        /// When it was measured, on this site's clock.
        measured_at: Millis,
    },
    /// An operator command.
    Command(Command),
    /// The answer to [`Action::Promote`]: whether the database is now a
    /// writable primary with `epoch` recorded.
    PromoteResult {
        /// The epoch of the action answered.
        epoch: u64,
        /// Whether the promotion succeeded.
        ok: bool,
    },
    /// The answer to [`Action::Unfence`]: whether the database accepts
    /// writes again.
    UnfenceResult {
        /// The epoch of the action answered.
        epoch: u64,
        /// Whether the unfence succeeded.
        ok: bool,
    },
    /// The answer to [`Action::CaptureFinalLsn`]: the final WAL position of
    /// this fenced database, `None` when it could not be read.
    FinalLsn {
        /// The position, read after the fence.
        lsn: Option<Lsn>,
    },
    /// The answer to [`Action::ReadReplayPosition`].
    ReplayPosition {
        /// How far the local database has replayed.
        replay: Replay,
    },
    /// How far the peer's copy is behind, as seen from here: what the
    /// peer's own `max_data_loss` guard would judge if the lease were
    /// released to it now. Sources: the replay lag of the peer's standby
    /// database measured by this site's peer probes, or the lag the peer's
    /// agent reports in its `/status`. `lag: None` says the peer reports
    /// that it would *not* take over now (its agent is paused, is not a
    /// healthy standby, does not answer, or knows no lag).
    ///
    /// Only the watchdog uses it: a holder whose service cannot be
    /// recovered releases the lease only to a peer whose recent reports
    /// say it would take it (see `docs/failover-safety.md`, "The
    /// watchdog"). The lease rules never do.
    PeerLag {
        /// The peer's lag, or `None`: it would not take over.
        lag: Option<Duration>,
        /// When it was measured, on this site's clock.
        measured_at: Millis,
    },
    /// The answer to [`Action::RestartLocal`]: the restart (the
    /// `on_restart` hooks) finished. The watchdog's grace counts from here.
    RestartResult {
        /// Whether every restart command succeeded.
        ok: bool,
    },
    /// The wall-clock time at `now`, in milliseconds since the Unix epoch.
    /// Drivers send it at start and now and then. It only stamps takeovers
    /// into the lease record and judges the cooldown after a restart; the
    /// lease rules never use it.
    WallClock {
        /// Milliseconds since 1970-01-01T00:00:00Z.
        unix_ms: u64,
    },
}

/// An operator command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Take the lease over at this site as soon as the current one has
    /// expired or been released, whatever the mode. Refused beyond
    /// `max_data_loss` unless `force`. Given to the site that is to take over.
    ///
    /// With `force`, also given to a successor of a switchover that holds
    /// the lease but waits for the old holder's final WAL position: it
    /// promotes at once with what it has replayed.
    Failover {
        /// Override the data-loss guard.
        force: bool,
    },
    /// Planned handover, with no committed data lost: the holder fences
    /// itself, reads its final WAL position, and releases the lease to `to`
    /// with that position in the record. `to` takes the lease at once but
    /// promotes only once its database has replayed up to that position
    /// (see [`PolicyConfig::switchover_timeout`](super::PolicyConfig) for
    /// what happens when it does not). Given to the current holder.
    Switchover {
        /// The site that is to take over.
        to: String,
        /// When the final WAL position cannot be read (the holder's
        /// database is down), hand the lease over without it instead of
        /// abandoning the switchover: `to` then promotes at once with what
        /// it has, and transactions it has not replayed are lost.
        force: bool,
    },
    /// Step down (the agent's clean shutdown): a holder fences itself, then
    /// writes the lease back released with no successor, so that the peer
    /// may take it at once instead of waiting for expiry, under its own
    /// guards (mode, pause, health, cooldown, data loss), as after a
    /// watchdog release. This site then stays a fenced standby and does
    /// not take that released lease back by itself (an operator's
    /// `failover` still can). A site that does not hold the lease does
    /// nothing. Given to the current holder.
    Release,
    /// Maintenance: no automatic takeover, restart or release. Lease
    /// renewal and self-fencing go on: safety is never paused.
    Pause,
    /// End of maintenance.
    Resume,
}

/// The outcome of a conditional lease write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The write took effect; the object now has this version.
    Written {
        /// The new version token.
        version: Version,
    },
    /// The condition did not hold (HTTP 412 or 409): the write did not take
    /// effect.
    Conflict,
    /// No clear answer (timeout, connection lost, 5xx): the write may or may
    /// not have taken effect.
    Error,
}

/// Why a site fences itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FenceReason {
    /// The agent just started and does not know whether it holds the lease.
    Startup,
    /// `t_send + ttl - margin` passed without a successful renewal.
    LeaseExpired,
    /// Another site holds a newer lease.
    LeaseLost,
    /// The local service could not be recovered; the lease is released.
    LocalFailure,
    /// Planned switchover to the peer.
    Switchover,
    /// The holder stepped down ([`Command::Release`]).
    StepDown,
    /// The local service was restarted while the site was fenced: the
    /// fence is enforced again, in case the one before could not reach
    /// the database while it restarted.
    Restarted,
}

/// Why a site promotes itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PromoteTrigger {
    /// The initial holder created the lease.
    Initial,
    /// The policy took over an expired or released lease on its own.
    Automatic,
    /// An operator's `failover` command.
    Operator {
        /// The data-loss guard was overridden.
        force: bool,
    },
    /// The holder handed the lease to this site (switchover). The policy
    /// issues the promotion only once the local database has replayed the
    /// old holder's final WAL position (the record's `final_lsn`), so no
    /// committed data is lost.
    Switchover,
    /// A restarted agent re-took the lease its previous incarnation held;
    /// the epoch is unchanged and the database usually primary already
    /// (when the record still names a `final_lsn`, the previous incarnation
    /// had not finished a switchover's wait: the wait starts again). Also:
    /// a site whose watchdog released the lease, and whose service has
    /// recovered since, takes back that released lease when nobody else
    /// took it (nothing was written anywhere else meanwhile).
    Reclaim,
}

/// A configured hook kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HookKind {
    /// `on_promote` hooks.
    OnPromote,
    /// `on_fence` hooks.
    OnFence,
}

/// How urgent an alert is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Severity {
    /// For the record.
    Info,
    /// Needs attention soon.
    Warning,
    /// Needs attention now.
    Critical,
}

/// What an alert is about (stable, for routing and tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AlertKind {
    /// This site fenced itself.
    Fenced,
    /// A fenced holder renewed in time again and accepts traffic again.
    Unfenced,
    /// This site created the lease, or took back the lease an earlier
    /// incarnation of its agent held: no change of holder, no promotion.
    Acquired,
    /// This site took the lease over from the other site and its database
    /// has been promoted: it accepts traffic.
    Promoted,
    /// The promotion (or the unfence) of the local database failed; it is
    /// retried.
    PromotionFailed,
    /// The successor of a switchover replayed the old holder's final WAL
    /// position: its promotion begins.
    Replayed,
    /// The successor of a switchover holds the lease but has not replayed
    /// the old holder's final WAL position within `switchover_timeout`, or
    /// its database cannot replay WAL at all: it does not promote until it
    /// has, or until an operator forces it.
    SwitchoverStalled,
    /// A switchover was abandoned by the holder (its final WAL position
    /// could not be read); it keeps the lease and accepts traffic again.
    SwitchoverAborted,
    /// The lease expired or was released and this site would take over, but
    /// the mode is `manual`: waiting for an operator's `failover`.
    FailoverNeeded,
    /// The lease expired or was released; mode `notify` only reports it.
    PrimaryLost,
    /// A takeover is blocked by a guard (data loss, cooldown, pause, local
    /// health).
    FailoverBlocked,
    /// An operator command was refused.
    CommandRefused,
    /// An operator command was accepted.
    CommandAccepted,
    /// The local service failed; the watchdog restarts it (or the restart
    /// failed).
    LocalRestart,
    /// The local service did not recover after the watchdog's restarts,
    /// and the holder keeps the lease because the peer would not (or may
    /// not) take it: mode, peer health, cooldown, or the peer's data loss.
    ReleaseWithheld,
    /// The peer's health changed.
    PeerHealth,
    /// The local service's health changed.
    LocalHealth,
    /// No lease exists and this site is not the one that creates it.
    LeaseMissing,
    /// Reads of the lease keep failing.
    RepositoryUnreachable,
    /// Maintenance pause began or ended.
    Maintenance,
}

/// Something the driver must do, in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Read `lease/active.json`; answer with [`Event::LeaseObserved`] or
    /// [`Event::LeaseReadFailed`].
    ReadLease,
    /// Write `record` under `condition` to take the lease; answer with
    /// [`Event::LeaseWriteResult`]. The policy took its `t_send` already.
    AcquireLease {
        /// Echo this in the result.
        request: RequestId,
        /// The record to write.
        record: LeaseRecord,
        /// Create-if-absent or update-if-version-matches.
        condition: WriteCondition,
        /// Why: the guards were checked now, when the decision was taken;
        /// the [`Action::Promote`] that follows success carries the same.
        trigger: PromoteTrigger,
    },
    /// Write `record` if the version is still `expected` (renewal).
    RenewLease {
        /// Echo this in the result.
        request: RequestId,
        /// The record to write.
        record: LeaseRecord,
        /// The version this site wrote last.
        expected: Version,
    },
    /// Write the released `record` if the version is still `expected`.
    /// Always preceded by [`Action::Fence`]: the driver must complete the
    /// fence before sending this write.
    ReleaseLease {
        /// Echo this in the result.
        request: RequestId,
        /// The released record.
        record: LeaseRecord,
        /// The version this site wrote last.
        expected: Version,
    },
    /// Promote the local database and record `epoch` in it; answer with
    /// [`Event::PromoteResult`]. The site accepts traffic only after a
    /// successful answer.
    Promote {
        /// The fencing token to record.
        epoch: u64,
        /// Why.
        trigger: PromoteTrigger,
    },
    /// Stop accepting traffic now (read-only, terminate sessions).
    Fence {
        /// Why.
        reason: FenceReason,
    },
    /// Make the database writable again (this site holds the lease at
    /// `epoch`); answer with [`Event::UnfenceResult`]. The site accepts
    /// traffic only after a successful answer.
    Unfence {
        /// The epoch under which traffic is accepted.
        epoch: u64,
    },
    /// Run the configured hooks of this kind.
    RunHook {
        /// Which hooks.
        kind: HookKind,
        /// The lease epoch, for the hooks' environment.
        epoch: u64,
    },
    /// Read the final WAL position of the local database, which was just
    /// fenced (after waiting for the terminated sessions to end, and with a
    /// WAL segment switch when archiving is on, so that a repository-fed
    /// standby can fetch the last segment); answer with
    /// [`Event::FinalLsn`]. Always preceded by [`Action::Fence`]: the
    /// driver must complete the fence first.
    CaptureFinalLsn,
    /// Read how far the local database has replayed; answer with
    /// [`Event::ReplayPosition`].
    ReadReplayPosition,
    /// The watchdog asks for the local service to be restarted (the
    /// `on_restart` hooks); answer with [`Event::RestartResult`]. Drivers
    /// run it beside the ordered database actions, not among them, so that
    /// a slow restart cannot delay a fence.
    RestartLocal {
        /// The site's role when the restart was decided, for the hooks'
        /// environment.
        role: Role,
        /// The epoch of the lease held, or the newest seen.
        epoch: u64,
    },
    /// Tell a human.
    Alert {
        /// How urgent.
        severity: Severity,
        /// What about.
        kind: AlertKind,
        /// One line for the operator.
        message: String,
    },
}

impl Action {
    /// For the three write actions: the request id, the record and the
    /// condition, so that a driver can treat them alike.
    pub fn lease_write(&self) -> Option<(RequestId, &LeaseRecord, WriteCondition)> {
        match self {
            Action::AcquireLease {
                request,
                record,
                condition,
                ..
            } => Some((*request, record, condition.clone())),
            Action::RenewLease {
                request,
                record,
                expected,
            }
            | Action::ReleaseLease {
                request,
                record,
                expected,
            } => Some((*request, record, WriteCondition::Matches(expected.clone()))),
            _ => None,
        }
    }
}

/// The site's role, as reported by [`Policy::role`](super::Policy::role).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Holds the lease and accepts traffic.
    Primary,
    /// Holds (or last held) a lease write but its deadline passed: fenced,
    /// still trying to renew.
    FencedHolder,
    /// A takeover write is in flight.
    Acquiring,
    /// Holds the lease, but its database is not open for traffic yet: it
    /// waits to replay the old holder's final WAL position, or the
    /// promotion is running.
    Promoting,
    /// Does not hold the lease.
    Standby,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Primary => "primary",
            Role::FencedHolder => "fenced-holder",
            Role::Acquiring => "acquiring",
            Role::Promoting => "promoting",
            Role::Standby => "standby",
        })
    }
}

/// A snapshot of the policy for `/status` and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// The role at the time asked.
    pub role: Role,
    /// Whether this site may accept traffic now.
    pub accepting: bool,
    /// Whether the site is fenced.
    pub fenced: bool,
    /// Maintenance pause.
    pub paused: bool,
    /// Local service health.
    pub local: Health,
    /// Peer health as seen from here.
    pub peer: Health,
    /// The newest lease record known here (held or observed).
    pub lease: Option<LeaseRecord>,
    /// For a holder: time left until it must fence.
    pub time_left: Option<Duration>,
    /// For a standby: time until the observed lease may be taken over.
    pub takeover_in: Option<Duration>,
    /// The latest lag measurement.
    pub lag: Option<Duration>,
    /// For the successor of a switchover: the final WAL position of the
    /// old holder that the local database must replay before it promotes.
    pub awaiting_lsn: Option<Lsn>,
    /// The latest replay position read while waiting for `awaiting_lsn`.
    pub replayed_lsn: Option<Lsn>,
}
