//! The policy state machine.

use std::time::Duration;

use super::events::{
    Action, AlertKind, Command, Event, FenceReason, PromoteTrigger, Role, Severity, Status,
    WriteOutcome,
};
use super::promote::{Handover, Promotion};
use super::{
    Grant, Health, HealthTracker, LeaseRecord, Lsn, Millis, PolicyConfig, RequestId, SiteIdentity,
    Target, Version, Watch, WriteCondition, holder_safe_until,
};
use crate::config::InvalidFailoverConfig;

/// Why a lease write was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Purpose {
    Acquire(PromoteTrigger),
    Renew,
    Release,
}

/// A lease write whose effect is not known for certain yet.
#[derive(Debug, Clone)]
pub(super) struct Pending {
    pub(super) id: RequestId,
    pub(super) purpose: Purpose,
    /// This site's clock, read before the request was handed to the driver.
    pub(super) t_send: Millis,
    pub(super) record: LeaseRecord,
    /// An answer came back (an error: the write may still have applied).
    pub(super) answered: bool,
}

/// The failover policy of one site: a pure state machine.
///
/// Feed it [`Event`]s with [`Policy::step`]; carry out the returned
/// [`Action`]s in order. Query [`Policy::may_accept_traffic`] whenever
/// traffic is to be admitted (the agent's `/active` endpoint does).
///
/// A new policy starts fenced, as a standby that knows nothing: a restarted
/// agent never assumes it holds the lease. Holding the lease is not enough
/// to accept traffic: the database must also have been opened for it (a
/// successful answer to the latest [`Action::Promote`] or
/// [`Action::Unfence`], issued after the latest [`Action::Fence`]).
#[derive(Debug, Clone)]
pub struct Policy {
    pub(super) cfg: PolicyConfig,
    pub(super) id: SiteIdentity,
    pub(super) local: HealthTracker,
    pub(super) peer: HealthTracker,
    pub(super) fenced: bool,
    pub(super) paused: bool,
    /// The lease this site holds (its latest successful write), if any.
    pub(super) grant: Option<Grant>,
    /// The epoch, successor and final WAL position of a release this site
    /// sent but has not seen land.
    pub(super) releasing: Option<(u64, Option<String>, Option<Lsn>)>,
    /// The epoch this site stepped down from ([`Command::Release`]): it
    /// does not take that epoch's released lease back on its own.
    pub(super) stepped_down: Option<u64>,
    /// The lease as last observed, when this site does not hold it.
    pub(super) watch: Option<Watch>,
    pub(super) lease_absent: bool,
    pub(super) max_epoch_seen: u64,
    pub(super) next_nonce: u64,
    pub(super) pending: Vec<Pending>,
    pub(super) last_renew_sent: Option<Millis>,
    pub(super) renew_failed: bool,
    /// A renewal found another version: renew only after reading it.
    pub(super) renew_conflict: bool,
    /// When the latest read was sent, and whether it was answered.
    pub(super) read_sent: Option<Millis>,
    pub(super) read_answered: bool,
    pub(super) need_read: bool,
    pub(super) read_failures: u32,
    pub(super) lag: Option<(Duration, Millis)>,
    pub(super) last_handover: Option<Millis>,
    /// The latest change of holder this site made or saw (not its own
    /// releases): when the peer's cooldown began, as far as it knows.
    pub(super) last_change: Option<Millis>,
    pub(super) operator_failover: Option<bool>,
    pub(super) restarts_done: u32,
    /// When the latest restart ended (or began, while it runs).
    pub(super) last_restart: Option<Millis>,
    /// A [`Action::RestartLocal`] has not been answered yet.
    pub(super) restarting: bool,
    /// The latest report that the peer would take over, with its lag.
    pub(super) peer_lag: Option<(Duration, Millis)>,
    /// The latest report that the peer would not take over.
    pub(super) peer_refused: Option<Millis>,
    /// The epoch whose lease this site's watchdog released: taken back
    /// once the service has recovered, if nobody took it meanwhile.
    pub(super) watchdog_released: Option<u64>,
    /// The last "blocked"/"waiting" alert, to raise it once per version.
    pub(super) last_alert: Option<(AlertKind, Option<Version>)>,
    /// How far the promotion for the lease this site holds has come.
    pub(super) promotion: Option<Promotion>,
    /// A switchover this holder began: waiting for its final WAL position.
    pub(super) handover: Option<Handover>,
    /// Database "open" actions ([`Action::Promote`], [`Action::Unfence`])
    /// issued and answered; the driver carries them out in order.
    pub(super) opens_issued: u64,
    pub(super) opens_answered: u64,
    /// The latest answered open failed.
    pub(super) open_failed: bool,
    /// `opens_issued` when the latest [`Action::Fence`] was issued: an open
    /// issued before it has been undone by it.
    pub(super) fence_mark: u64,
    /// When to retry a failed open.
    pub(super) reopen_at: Option<Millis>,
    /// A wall-clock reading (Unix ms) and the local time it was taken at.
    pub(super) wall: Option<(u64, Millis)>,
    /// The cooldown learnt from a takeover stamp in the lease record.
    pub(super) cooldown_until: Option<Millis>,
}

impl Policy {
    /// A policy for one site. Fails when the configuration cannot be safe
    /// (see [`PolicyConfig::validate`]).
    pub fn new(cfg: PolicyConfig, id: SiteIdentity) -> Result<Self, InvalidFailoverConfig> {
        cfg.validate()?;
        Ok(Policy {
            local: HealthTracker::new(cfg.unhealthy_threshold, cfg.healthy_threshold),
            peer: HealthTracker::new(cfg.unhealthy_threshold, cfg.healthy_threshold),
            cfg,
            id,
            fenced: true,
            paused: false,
            grant: None,
            releasing: None,
            stepped_down: None,
            watch: None,
            lease_absent: false,
            max_epoch_seen: 0,
            next_nonce: 1,
            pending: Vec::new(),
            last_renew_sent: None,
            renew_failed: false,
            renew_conflict: false,
            read_sent: None,
            read_answered: true,
            need_read: true,
            read_failures: 0,
            lag: None,
            last_handover: None,
            last_change: None,
            operator_failover: None,
            restarts_done: 0,
            last_restart: None,
            restarting: false,
            peer_lag: None,
            peer_refused: None,
            watchdog_released: None,
            last_alert: None,
            promotion: None,
            handover: None,
            opens_issued: 0,
            opens_answered: 0,
            open_failed: false,
            fence_mark: 0,
            reopen_at: None,
            wall: None,
            cooldown_until: None,
        })
    }

    /// The actions to run when the agent starts: enforce the fence (without
    /// running `on_fence` hooks) and read the lease.
    pub fn start(&mut self, now: Millis) -> Vec<Action> {
        let mut out = vec![Action::Fence {
            reason: FenceReason::Startup,
        }];
        self.poll(now, &mut out);
        out
    }

    /// Processes one event observed at `now` (this site's monotonic clock)
    /// and returns what to do, in order. Every event also acts as a tick.
    pub fn step(&mut self, event: Event, now: Millis) -> Vec<Action> {
        let mut out = Vec::new();
        match event {
            Event::Tick => {}
            Event::Probe { target, ok } => self.on_probe(target, ok, &mut out),
            Event::LeaseObserved { lease } => self.on_observed(lease, now, &mut out),
            Event::LeaseReadFailed => {
                self.read_answered = true;
                self.read_failures = self.read_failures.saturating_add(1);
                if self.read_failures == self.cfg.unhealthy_threshold {
                    alert(
                        &mut out,
                        Severity::Warning,
                        AlertKind::RepositoryUnreachable,
                        format!(
                            "{} cannot read the lease ({} consecutive failures)",
                            self.id.site, self.read_failures
                        ),
                    );
                }
            }
            Event::LeaseWriteResult { request, outcome } => {
                self.on_write_result(request, outcome, now, &mut out)
            }
            Event::ReplicationLag { lag, measured_at } => self.lag = Some((lag, measured_at)),
            Event::Command(c) => self.on_command(c, now, &mut out),
            Event::PromoteResult { epoch, ok } => self.on_promoted(epoch, ok, now, &mut out),
            Event::UnfenceResult { epoch, ok } => self.on_unfenced(epoch, ok, now, &mut out),
            Event::FinalLsn { lsn } => self.on_final_lsn(lsn, now, &mut out),
            Event::ReplayPosition { replay } => self.on_replay(replay, now, &mut out),
            Event::WallClock { unix_ms } => self.wall = Some((unix_ms, now)),
            Event::PeerLag {
                lag: Some(lag),
                measured_at,
            } => self.peer_lag = Some((lag, measured_at)),
            Event::PeerLag {
                lag: None,
                measured_at,
            } => self.peer_refused = self.peer_refused.max(Some(measured_at)),
            Event::RestartResult { ok } => self.on_restarted(ok, now, &mut out),
        }
        self.poll(now, &mut out);
        out
    }

    /// Whether this site may accept live traffic at `now`: it holds the
    /// lease by the holder's rule (`now < t_send + ttl - margin` of its
    /// latest successful write), is not fenced, and its database has been
    /// promoted for this lease and opened since the latest fence.
    pub fn may_accept_traffic(&self, now: Millis) -> bool {
        self.accepting_until().is_some_and(|until| now < until)
    }

    /// The end (exclusive) of the current right to accept traffic, if any.
    pub fn accepting_until(&self) -> Option<Millis> {
        match &self.grant {
            Some(g) if !self.fenced && self.db_open() && self.promotion_done() => {
                Some(g.safe_until)
            }
            _ => None,
        }
    }

    /// The epoch of the lease this site holds.
    pub fn epoch(&self) -> Option<u64> {
        self.grant.as_ref().map(|g| g.record.epoch)
    }

    /// The site's role at `now`.
    pub fn role(&self, now: Millis) -> Role {
        if self.grant.is_some() {
            if self.may_accept_traffic(now) {
                Role::Primary
            } else if !self.promotion_done() {
                Role::Promoting
            } else {
                Role::FencedHolder
            }
        } else if self.in_flight(|p| matches!(p, Purpose::Acquire(_)), now) {
            Role::Acquiring
        } else {
            Role::Standby
        }
    }

    /// Whether a release this site sent has not been seen to land yet (it
    /// is retried on the newer version when a renewal overtook it).
    pub fn is_releasing(&self) -> bool {
        self.releasing.is_some()
    }

    /// Whether the site is fenced.
    pub fn is_fenced(&self) -> bool {
        self.fenced
    }

    /// Whether maintenance pause is on.
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// The judged health of a target.
    pub fn health(&self, target: Target) -> Health {
        match target {
            Target::Local => self.local.health(),
            Target::Peer => self.peer.health(),
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &PolicyConfig {
        &self.cfg
    }

    /// A snapshot for `/status`.
    pub fn status(&self, now: Millis) -> Status {
        Status {
            role: self.role(now),
            accepting: self.may_accept_traffic(now),
            fenced: self.fenced,
            paused: self.paused,
            local: self.local.health(),
            peer: self.peer.health(),
            lease: self
                .grant
                .as_ref()
                .map(|g| g.record.clone())
                .or_else(|| self.watch.as_ref().map(|w| w.record.clone())),
            time_left: self
                .grant
                .as_ref()
                .map(|g| g.safe_until.saturating_since(now)),
            takeover_in: self.watch.as_ref().map(|w| {
                w.expires_at(self.cfg.lease_ttl, self.cfg.lease_margin)
                    .saturating_since(now)
            }),
            lag: self.lag.map(|(l, _)| l),
            awaiting_lsn: self.awaiting().map(|w| w.lsn),
            replayed_lsn: self.awaiting().and_then(|w| w.replayed),
        }
    }

    /// The latest time by which the driver should deliver an event (a
    /// [`Event::Tick`] if nothing else) so that deadlines are met exactly:
    /// the holder's fence point, the next renewal or read, a takeover point.
    pub fn next_wakeup(&self, now: Millis) -> Millis {
        let mut at = now + self.cfg.read_interval;
        let mut consider = |t: Millis| {
            if t > now && t < at {
                at = t;
            }
        };
        if let Some(g) = &self.grant {
            consider(g.safe_until);
            if let Some(t) = self.last_renew_sent {
                consider(t + self.cfg.renew_interval);
                if self.renew_failed {
                    consider(t + super::decide::RETRY_DELAY);
                }
            }
        }
        if let (true, Some(t)) = (self.need_read, self.read_sent) {
            consider(t + super::decide::RETRY_DELAY);
        }
        if let Some(w) = &self.watch {
            consider(w.expires_at(self.cfg.lease_ttl, self.cfg.lease_margin));
        }
        for p in self.pending.iter().filter(|p| !p.answered) {
            consider(p.t_send + self.cfg.request_timeout);
        }
        if let (Some(t), false) = (self.last_restart, self.restarting) {
            consider(t + self.cfg.watchdog_grace);
        }
        for t in self.promotion_wakeups() {
            consider(t);
        }
        at
    }

    // ----- event handlers -------------------------------------------------

    fn on_probe(&mut self, target: Target, ok: bool, out: &mut Vec<Action>) {
        let tracker = match target {
            Target::Local => &mut self.local,
            Target::Peer => &mut self.peer,
        };
        let Some(health) = tracker.record(ok) else {
            return;
        };
        let (kind, who) = match target {
            Target::Local => (AlertKind::LocalHealth, &self.id.site),
            Target::Peer => (AlertKind::PeerHealth, &self.id.peer),
        };
        let severity = if health == Health::Healthy {
            Severity::Info
        } else {
            Severity::Warning
        };
        alert(out, severity, kind, format!("{who} is {health}"));
        if target == Target::Local && health == Health::Healthy {
            self.restarts_done = 0;
            self.last_restart = None;
            // A later failure alerts again.
            if self
                .last_alert
                .as_ref()
                .is_some_and(|(k, _)| *k == AlertKind::ReleaseWithheld)
            {
                self.last_alert = None;
            }
        }
    }

    fn on_command(&mut self, command: Command, now: Millis, out: &mut Vec<Action>) {
        let site = self.id.site.clone();
        match command {
            Command::Pause => {
                self.paused = true;
                alert(
                    out,
                    Severity::Warning,
                    AlertKind::Maintenance,
                    format!("{site}: maintenance pause on, no automatic failover"),
                );
            }
            Command::Resume => {
                self.paused = false;
                alert(
                    out,
                    Severity::Info,
                    AlertKind::Maintenance,
                    format!("{site}: maintenance pause off"),
                );
            }
            Command::Failover { force } => {
                if self.awaiting().is_some() {
                    self.force_promotion(force, now, out);
                } else if self.grant.is_some() {
                    refuse(
                        out,
                        format!(
                            "failover refused: {site} already holds the lease (use switchover to move it)"
                        ),
                    );
                } else if !force && !self.lag_ok(now) {
                    refuse(
                        out,
                        format!(
                            "failover refused: {} (use --force to accept the loss)",
                            self.lag_text(now)
                        ),
                    );
                } else {
                    self.operator_failover = Some(force);
                    alert(
                        out,
                        Severity::Warning,
                        AlertKind::CommandAccepted,
                        format!(
                            "failover to {site} requested{}: taking the lease once it has expired or is released",
                            if force { " (forced)" } else { "" }
                        ),
                    );
                }
            }
            Command::Release => {
                let Some(g) = &self.grant else {
                    alert(
                        out,
                        Severity::Info,
                        AlertKind::CommandAccepted,
                        format!("release: {site} does not hold the lease, nothing to do"),
                    );
                    return;
                };
                let epoch = g.record.epoch;
                alert(
                    out,
                    Severity::Warning,
                    AlertKind::CommandAccepted,
                    format!("{site} steps down: fencing and releasing the lease (epoch {epoch})"),
                );
                self.stepped_down = Some(epoch);
                self.operator_failover = None;
                self.release(FenceReason::StepDown, None, None, now, out);
            }
            Command::Switchover { to, force } => {
                if to != self.id.peer {
                    refuse(
                        out,
                        format!("switchover refused: {to} is not the peer of {site}"),
                    );
                } else if self.grant.is_none() {
                    refuse(
                        out,
                        format!(
                            "switchover refused: {site} does not hold the lease (send it to the holder)"
                        ),
                    );
                } else if !self.peer.is_healthy() {
                    refuse(
                        out,
                        format!(
                            "switchover refused: {to} is not healthy ({})",
                            self.peer.health()
                        ),
                    );
                } else if self.handover.is_some() {
                    refuse(
                        out,
                        format!("switchover refused: a switchover from {site} is in progress"),
                    );
                } else {
                    self.begin_handover(to, force, now, out);
                }
            }
        }
    }

    fn on_observed(
        &mut self,
        lease: Option<(Version, LeaseRecord)>,
        now: Millis,
        out: &mut Vec<Action>,
    ) {
        self.read_answered = true;
        self.read_failures = 0;
        self.renew_conflict = false;
        let Some((version, record)) = lease else {
            // While the grant is valid an answer of "absent" may be stale
            // (read before this site created the lease): ignore it.
            if self.grant.as_ref().is_some_and(|g| g.is_valid(now)) {
                return;
            }
            self.lease_absent = true;
            self.watch = None;
            if self.grant.take().is_some() {
                self.fence(FenceReason::LeaseLost, out);
                alert(
                    out,
                    Severity::Critical,
                    AlertKind::Fenced,
                    format!("{}: the lease object disappeared", self.id.site),
                );
            }
            return;
        };
        self.lease_absent = false;
        if record.epoch < self.max_epoch_seen {
            return; // epochs only grow: an answer overtaken by a newer one
        }
        // One of this incarnation's writes whose answer was missed or lost.
        if record.holder == self.id.site
            && record.incarnation == self.id.incarnation
            && let Some(i) = self
                .pending
                .iter()
                .position(|p| p.record.nonce == record.nonce)
        {
            let p = self.pending.remove(i);
            self.on_written(p, version.clone(), now, out);
        }
        if let Some(g) = &mut self.grant {
            let ours = record.holder == self.id.site
                && record.incarnation == self.id.incarnation
                && record.epoch == g.record.epoch;
            if ours && record.is_newer_than(&g.record) && !record.released {
                // A renewal of ours whose send time is forgotten: learn the
                // version for the next compare-and-swap, keep the deadline.
                g.version = version;
                g.record = record;
            } else if record.is_newer_than(&g.record) {
                let epoch = record.epoch;
                self.grant = None;
                self.fence(FenceReason::LeaseLost, out);
                alert(
                    out,
                    Severity::Critical,
                    AlertKind::Fenced,
                    format!(
                        "{}: lost the lease to {} (epoch {epoch})",
                        self.id.site, record.holder
                    ),
                );
                self.observe(version, record, now);
            }
            return;
        }
        if self
            .watch
            .as_ref()
            .is_some_and(|w| w.record.is_newer_than(&record))
        {
            return; // a stale answer, overtaken by a newer one
        }
        if let Some((epoch, successor, final_lsn)) = self.releasing.clone() {
            let unreleased_ours = record.holder == self.id.site
                && record.incarnation == self.id.incarnation
                && record.epoch == epoch
                && !record.released;
            if unreleased_ours && !self.in_flight(|p| p == Purpose::Release, now) {
                // A renewal landed after our release was sent: release again.
                let mut released = record.clone();
                released.renewals += 1;
                released.released = true;
                released.successor = successor;
                released.final_lsn = final_lsn;
                released.nonce = self.nonce();
                self.send(
                    Purpose::Release,
                    released,
                    WriteCondition::Matches(version.clone()),
                    now,
                    out,
                );
            } else if !unreleased_ours {
                self.releasing = None;
            }
        }
        self.observe(version, record, now);
    }

    fn observe(&mut self, version: Version, record: LeaseRecord, now: Millis) {
        self.learn_cooldown(&record, now);
        if record.epoch > self.max_epoch_seen {
            if self.max_epoch_seen > 0 {
                self.last_handover = Some(now);
                self.last_change = Some(now);
            }
            self.max_epoch_seen = record.epoch;
        }
        match &mut self.watch {
            Some(w) if w.version == version => w.last_seen = now,
            _ => self.watch = Some(Watch::new(version, record, now)),
        }
    }

    fn on_write_result(
        &mut self,
        request: RequestId,
        outcome: WriteOutcome,
        now: Millis,
        out: &mut Vec<Action>,
    ) {
        let Some(i) = self.pending.iter().position(|p| p.id == request) else {
            return;
        };
        match outcome {
            WriteOutcome::Written { version } => {
                let p = self.pending.remove(i);
                self.on_written(p, version, now, out);
            }
            WriteOutcome::Conflict => {
                let p = self.pending.remove(i);
                match p.purpose {
                    // Retrying the same version is pointless: read first.
                    Purpose::Renew => self.renew_conflict = true,
                    // The view the takeover relied on is outdated.
                    Purpose::Acquire(_) => {
                        self.watch = None;
                        self.lease_absent = false;
                    }
                    Purpose::Release => {}
                }
                self.need_read = true;
            }
            WriteOutcome::Error => {
                // It may still have taken effect: keep it to recognise it.
                let p = &mut self.pending[i];
                p.answered = true;
                if p.purpose == Purpose::Renew {
                    self.renew_failed = true;
                }
                self.need_read = true;
            }
        }
    }

    /// One of this site's writes took effect, producing `version`.
    fn on_written(&mut self, p: Pending, version: Version, now: Millis, out: &mut Vec<Action>) {
        let safe_until = holder_safe_until(p.t_send, self.cfg.lease_ttl, self.cfg.lease_margin);
        let superseded = p.record.epoch < self.max_epoch_seen;
        self.max_epoch_seen = self.max_epoch_seen.max(p.record.epoch);
        // The object exists now, whatever an earlier read said.
        self.lease_absent = false;
        match p.purpose {
            Purpose::Acquire(_) if superseded => {
                // A newer epoch was seen since: this write has been overtaken.
            }
            Purpose::Acquire(trigger) => {
                if self.grant.is_some() || now >= safe_until {
                    // Too late to be of use: observe it; a reclaim follows.
                    self.observe(version, p.record, now);
                    return;
                }
                let epoch = p.record.epoch;
                let final_lsn = p.record.final_lsn;
                self.grant = Some(Grant {
                    version,
                    record: p.record,
                    safe_until,
                });
                self.last_renew_sent = Some(p.t_send);
                self.renew_failed = false;
                self.watch = None;
                self.operator_failover = None;
                self.last_alert = None;
                self.watchdog_released = None;
                // Creating the lease or taking back one's own is no
                // handover: no cooldown.
                if !matches!(trigger, PromoteTrigger::Reclaim | PromoteTrigger::Initial) {
                    self.last_handover = Some(now);
                    self.last_change = Some(now);
                }
                self.begin_promotion(epoch, trigger, final_lsn, now, out);
            }
            Purpose::Renew => {
                let Some(g) = &mut self.grant else { return };
                if p.record.epoch != g.record.epoch || !p.record.is_newer_than(&g.record) {
                    return;
                }
                g.version = version;
                g.record = p.record;
                g.safe_until = g.safe_until.max(safe_until);
                self.renew_failed = false;
                let valid = g.is_valid(now);
                if self.fenced && valid && self.promotion_done() {
                    alert(
                        out,
                        Severity::Warning,
                        AlertKind::Unfenced,
                        format!("{}: lease renewed again", self.id.site),
                    );
                    self.unfence(now, out);
                }
            }
            Purpose::Release => {
                if self
                    .releasing
                    .as_ref()
                    .is_some_and(|r| r.0 == p.record.epoch)
                {
                    self.releasing = None;
                }
                self.observe(version, p.record, now);
            }
        }
    }
}

pub(super) fn alert(out: &mut Vec<Action>, severity: Severity, kind: AlertKind, message: String) {
    out.push(Action::Alert {
        severity,
        kind,
        message,
    });
}

pub(super) fn refuse(out: &mut Vec<Action>, message: String) {
    alert(out, Severity::Warning, AlertKind::CommandRefused, message);
}
