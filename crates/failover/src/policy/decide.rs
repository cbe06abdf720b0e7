//! The time-driven half of the policy: renewal, reads, takeover decisions
//! and the watchdog, evaluated after every event.

use std::time::Duration;

use super::events::HookKind;
use super::events::{Action, AlertKind, FenceReason, PromoteTrigger, Severity};
use super::machine::{Pending, Policy, Purpose, alert, refuse};
use super::{Health, LeaseRecord, Lsn, Millis, RequestId, Version, WriteCondition, ms};
use crate::config::FailoverMode;

/// Delay before a failed lease request is retried.
pub(super) const RETRY_DELAY: Duration = Duration::from_millis(200);

impl Policy {
    pub(super) fn poll(&mut self, now: Millis, out: &mut Vec<Action>) {
        let horizon = ms(self.cfg.lease_ttl).saturating_mul(2);
        self.pending
            .retain(|p| now.0 < p.t_send.0.saturating_add(horizon));
        let expired = self
            .grant
            .as_ref()
            .filter(|g| !g.is_valid(now))
            .map(|g| g.record.epoch);
        // Also fence a holder whose promotion or unfence is still running:
        // the database it is opening must be closed again after it.
        if let Some(epoch) = expired
            && (!self.fenced || self.opens_issued != self.fence_mark)
        {
            let was_accepting = !self.fenced;
            self.fence(FenceReason::LeaseExpired, out);
            if was_accepting {
                alert(
                    out,
                    Severity::Critical,
                    AlertKind::Fenced,
                    format!(
                        "{}: lease not renewed in time, fenced (epoch {epoch})",
                        self.id.site
                    ),
                );
            }
        }
        self.watchdog(now, out);
        self.advance_promotion(now, out);
        self.maybe_renew(now, out);
        self.maybe_read(now, out);
        self.consider_takeover(now, out);
    }

    pub(super) fn maybe_renew(&mut self, now: Millis, out: &mut Vec<Action>) {
        let Some(g) = &self.grant else { return };
        if self.renew_conflict || self.in_flight(|p| p == Purpose::Renew, now) {
            return;
        }
        let last = self.last_renew_sent.unwrap_or(Millis::ZERO);
        let due = now >= last + self.cfg.renew_interval
            || (self.renew_failed && now >= last + RETRY_DELAY);
        if !due {
            return;
        }
        let mut record = g.record.clone();
        let expected = g.version.clone();
        record.renewals += 1;
        record.incarnation = self.id.incarnation;
        record.ttl_ms = ms(self.cfg.lease_ttl);
        record.margin_ms = ms(self.cfg.lease_margin);
        record.nonce = self.nonce();
        if self.promotion_done() {
            // The switchover's wait is over: a restarted agent need not
            // wait again.
            record.final_lsn = None;
        }
        self.last_renew_sent = Some(now);
        self.renew_failed = false;
        self.send(
            Purpose::Renew,
            record,
            WriteCondition::Matches(expected),
            now,
            out,
        );
    }

    pub(super) fn maybe_read(&mut self, now: Millis, out: &mut Vec<Action>) {
        if !self.read_answered
            && self
                .read_sent
                .is_some_and(|t| now < t + self.cfg.request_timeout)
        {
            return;
        }
        let waited = |d: Duration| self.read_sent.is_none_or(|t| now >= t + d);
        let due = (self.need_read && waited(RETRY_DELAY))
            || (self.grant.is_none() && waited(self.cfg.read_interval));
        if due {
            self.read_sent = Some(now);
            self.read_answered = false;
            self.need_read = false;
            out.push(Action::ReadLease);
        }
    }

    pub(super) fn consider_takeover(&mut self, now: Millis, out: &mut Vec<Action>) {
        let acquiring = |p: &Pending| matches!(p.purpose, Purpose::Acquire(_));
        let recent = |p: &Pending| now < p.t_send + RETRY_DELAY;
        if self.grant.is_some()
            || self.releasing.is_some()
            || self.in_flight(|p| matches!(p, Purpose::Acquire(_)), now)
            || self.pending.iter().any(|p| acquiring(p) && recent(p))
        {
            return;
        }
        let site = self.id.site.clone();
        if self.lease_absent {
            if self.id.initial_holder && self.local.is_healthy() {
                let record = self.new_record(self.max_epoch_seen + 1, 0);
                self.send(
                    Purpose::Acquire(PromoteTrigger::Initial),
                    record,
                    WriteCondition::Absent,
                    now,
                    out,
                );
            } else if !self.id.initial_holder {
                self.alert_once(
                    out,
                    AlertKind::LeaseMissing,
                    None,
                    Severity::Warning,
                    format!(
                        "no lease exists; {site} waits for {} to create it",
                        self.id.peer
                    ),
                );
            }
            return;
        }
        let Some(w) = &self.watch else { return };
        let (version, rec) = (w.version.clone(), w.record.clone());
        let cond = WriteCondition::Matches(version.clone());
        if rec.holder == site && !rec.released {
            // Held by an earlier incarnation of this site: take it back.
            if self.local.is_healthy() {
                let mut record = rec.clone();
                record.renewals += 1;
                record.incarnation = self.id.incarnation;
                record.nonce = self.nonce();
                record.ttl_ms = ms(self.cfg.lease_ttl);
                record.margin_ms = ms(self.cfg.lease_margin);
                self.send(
                    Purpose::Acquire(PromoteTrigger::Reclaim),
                    record,
                    cond,
                    now,
                    out,
                );
            }
            return;
        }
        if rec.holder == site
            && rec.released
            && rec.successor.is_none()
            && self.watchdog_released == Some(rec.epoch)
            && self.operator_failover.is_none()
        {
            // This site's watchdog released this lease and nobody took it
            // since (the conditional write below proves it): nothing was
            // written anywhere else, so taking it back loses nothing and
            // needs no data-loss guard or cooldown.
            if self.local.is_healthy() && !self.paused {
                let mut record = rec.clone();
                record.renewals += 1;
                record.released = false;
                record.successor = None;
                record.final_lsn = None;
                record.incarnation = self.id.incarnation;
                record.nonce = self.nonce();
                record.ttl_ms = ms(self.cfg.lease_ttl);
                record.margin_ms = ms(self.cfg.lease_margin);
                alert(
                    out,
                    Severity::Warning,
                    AlertKind::LocalHealth,
                    format!(
                        "{site} recovered; {} did not take the lease it released: taking it back (epoch {})",
                        self.id.peer, rec.epoch
                    ),
                );
                self.send(
                    Purpose::Acquire(PromoteTrigger::Reclaim),
                    record,
                    cond,
                    now,
                    out,
                );
            }
            return;
        }
        let expired = now >= w.expires_at(self.cfg.lease_ttl, self.cfg.lease_margin);
        if !expired && !rec.open_to(&site) {
            return;
        }
        // This site stepped down from this very lease: only an operator's
        // failover takes it back; a newer epoch ends the restraint.
        if rec.holder == site
            && self.stepped_down == Some(rec.epoch)
            && self.operator_failover.is_none()
        {
            return;
        }
        let epoch = rec.epoch.max(self.max_epoch_seen) + 1;
        let v = Some(version);
        let holder = rec.holder.clone();
        let block = |this: &mut Self, out: &mut Vec<Action>, why: String| {
            this.alert_once(
                out,
                AlertKind::FailoverBlocked,
                v.clone(),
                Severity::Critical,
                format!("lease of {holder} expired or released; {site} does not take over: {why}"),
            );
        };
        if rec.released && rec.successor.as_deref() == Some(site.as_str()) {
            if self.local.is_healthy() {
                // The old holder's final WAL position travels on: the
                // promotion waits for it, also after a restart of this agent.
                let mut record = self.takeover_record(epoch, now);
                record.final_lsn = rec.final_lsn;
                self.send(
                    Purpose::Acquire(PromoteTrigger::Switchover),
                    record,
                    cond,
                    now,
                    out,
                );
            } else {
                block(
                    self,
                    out,
                    format!("local service is {}", self.local.health()),
                );
            }
        } else if let Some(force) = self.operator_failover {
            if !force && !self.lag_ok(now) {
                self.operator_failover = None;
                refuse(
                    out,
                    format!(
                        "failover refused: {} (use --force to accept the loss)",
                        self.lag_text(now)
                    ),
                );
            } else {
                let record = self.takeover_record(epoch, now);
                self.send(
                    Purpose::Acquire(PromoteTrigger::Operator { force }),
                    record,
                    cond,
                    now,
                    out,
                );
            }
        } else if self.cfg.mode == FailoverMode::Manual {
            self.alert_once(out, AlertKind::FailoverNeeded, v, Severity::Critical, format!(
                "lease of {holder} expired or released; run `warmspare failover` to promote {site}"
            ));
        } else if self.cfg.mode == FailoverMode::Notify {
            self.alert_once(
                out,
                AlertKind::PrimaryLost,
                v,
                Severity::Critical,
                format!("lease of {holder} expired or released (mode notify: no failover)"),
            );
        } else if self.paused {
            block(self, out, "maintenance pause".into());
        } else if !self.local.is_healthy() {
            block(
                self,
                out,
                format!("local service is {}", self.local.health()),
            );
        } else if self.in_cooldown(now) {
            block(self, out, "cooldown after the previous handover".into());
        } else if !self.lag_ok(now) {
            block(self, out, self.lag_text(now));
        } else {
            let record = self.takeover_record(epoch, now);
            self.send(
                Purpose::Acquire(PromoteTrigger::Automatic),
                record,
                cond,
                now,
                out,
            );
        }
    }

    pub(super) fn watchdog(&mut self, now: Millis, out: &mut Vec<Action>) {
        if self.paused || self.restarting || self.local.health() != Health::Unhealthy {
            return;
        }
        if self
            .last_restart
            .is_some_and(|t| now < t + self.cfg.watchdog_grace)
        {
            return;
        }
        let site = self.id.site.clone();
        if self.restarts_done < self.cfg.watchdog_restarts {
            self.restarts_done += 1;
            self.last_restart = Some(now);
            self.restarting = true;
            let epoch = self.epoch().unwrap_or(self.max_epoch_seen);
            out.push(Action::RestartLocal {
                role: self.role(now),
                epoch,
            });
            alert(
                out,
                Severity::Warning,
                AlertKind::LocalRestart,
                format!(
                    "{site} is unhealthy: restart {} of {}",
                    self.restarts_done, self.cfg.watchdog_restarts
                ),
            );
            return;
        }
        let Some(epoch) = self.epoch() else { return };
        match self.release_withheld(now) {
            None => {
                alert(
                    out,
                    Severity::Critical,
                    AlertKind::Fenced,
                    format!(
                        "{site} did not recover: releasing the lease to {}",
                        self.id.peer
                    ),
                );
                self.watchdog_released = Some(epoch);
                self.release(FenceReason::LocalFailure, None, None, now, out);
            }
            Some(why) => {
                let peer = self.id.peer.clone();
                self.alert_once(
                    out,
                    AlertKind::ReleaseWithheld,
                    None,
                    Severity::Critical,
                    format!(
                        "{site} did not recover; it keeps the lease because {why} (it releases \
                         the lease once that changes; `warmspare switchover --to {peer} --force` \
                         hands it over now)"
                    ),
                );
            }
        }
    }

    /// Why a holder whose service did not recover must not release the
    /// lease now: a release the peer would refuse leaves no site active.
    /// `None` when the peer would take it: mode `automatic`, the peer
    /// healthy, no cooldown, and a report of the peer's data loss within
    /// `max_data_loss` no older than `peer_report_max_age`, with no newer
    /// report that it would not take over.
    pub(super) fn release_withheld(&self, now: Millis) -> Option<String> {
        let peer = &self.id.peer;
        if self.cfg.mode != FailoverMode::Automatic {
            return Some(format!("the mode is {}", self.cfg.mode));
        }
        if !self.peer.is_healthy() {
            return Some(format!("{peer} is {}", self.peer.health()));
        }
        // The peer's cooldown began at the last change of holder (its own
        // releases aside); a stamp in the record extends it the same way
        // at both sites.
        if self
            .last_change
            .is_some_and(|t| now < t + self.cfg.cooldown)
            || self.cooldown_until.is_some_and(|t| now < t)
        {
            return Some(format!(
                "{peer} would refuse it: the cooldown after the previous handover runs"
            ));
        }
        let fresh = |at: Millis| now.saturating_since(at) <= self.cfg.peer_report_max_age();
        let refused = self.peer_refused.filter(|&t| fresh(t));
        let report = self.peer_lag.filter(|&(_, at)| fresh(at));
        match (refused, report) {
            (Some(r), Some((_, at))) if r >= at => {
                Some(format!("{peer} reports that it would not take over"))
            }
            (Some(_), None) => Some(format!("{peer} reports that it would not take over")),
            (_, None) => Some(format!("{peer}'s data loss is not known")),
            (_, Some((lag, at))) => {
                let bound = self.bound(lag, at, now);
                (bound > self.cfg.max_data_loss).then(|| {
                    format!(
                        "{peer} may be {} behind, beyond max_data_loss {}",
                        humantime::format_duration(Duration::from_millis(ms(bound))),
                        humantime::format_duration(self.cfg.max_data_loss)
                    )
                })
            }
        }
    }

    /// The answer to [`Action::RestartLocal`]: the grace starts now, and a
    /// fenced site enforces its fence again (one issued while the service
    /// restarted may not have reached it).
    pub(super) fn on_restarted(&mut self, ok: bool, now: Millis, out: &mut Vec<Action>) {
        if !self.restarting {
            return;
        }
        self.restarting = false;
        self.last_restart = Some(now);
        if !ok {
            alert(
                out,
                Severity::Warning,
                AlertKind::LocalRestart,
                format!("{}: the restart of the local service failed", self.id.site),
            );
        }
        if self.fenced {
            // As `fence`: an open issued before this counts for nothing.
            self.fence_mark = self.opens_issued;
            out.push(Action::Fence {
                reason: FenceReason::Restarted,
            });
        }
    }

    /// Whether the cooldown after a handover this process performed or
    /// observed (or learnt from a takeover stamp) still runs.
    pub(super) fn in_cooldown(&self, now: Millis) -> bool {
        self.last_handover
            .is_some_and(|t| now < t + self.cfg.cooldown)
            || self.cooldown_until.is_some_and(|t| now < t)
    }

    // ----- helpers --------------------------------------------------------

    /// Fences this site, then writes the lease back released (to
    /// `successor`, with the holder's `final_lsn` for a switchover).
    pub(super) fn release(
        &mut self,
        reason: FenceReason,
        successor: Option<String>,
        final_lsn: Option<Lsn>,
        now: Millis,
        out: &mut Vec<Action>,
    ) {
        let Some(g) = self.grant.take() else { return };
        self.handover = None;
        self.promotion = None;
        self.fence(reason, out);
        let mut record = g.record.clone();
        record.renewals += 1;
        record.released = true;
        record.successor = successor.clone();
        record.final_lsn = final_lsn;
        record.incarnation = self.id.incarnation;
        record.nonce = self.nonce();
        self.releasing = Some((record.epoch, successor, final_lsn));
        self.last_handover = Some(now);
        self.send(
            Purpose::Release,
            record,
            WriteCondition::Matches(g.version),
            now,
            out,
        );
    }

    /// Stops accepting traffic: issues [`Action::Fence`] unless the site is
    /// fenced already and no open of the database was issued since.
    pub(super) fn fence(&mut self, reason: FenceReason, out: &mut Vec<Action>) {
        if self.fenced && self.opens_issued == self.fence_mark {
            return;
        }
        self.fenced = true;
        self.fence_mark = self.opens_issued;
        out.push(Action::Fence { reason });
        let epoch = self.max_epoch_seen;
        out.push(Action::RunHook {
            kind: HookKind::OnFence,
            epoch,
        });
    }

    /// Accepts traffic again once the database is open: lifts the fence of
    /// a holder whose promotion is done and whose grant is valid, and
    /// issues [`Action::Unfence`] when the latest fence came after the
    /// latest open (a successful promotion opens the database itself).
    pub(super) fn unfence(&mut self, now: Millis, out: &mut Vec<Action>) {
        let Some(g) = &self.grant else { return };
        if !self.fenced || !g.is_valid(now) || !self.promotion_done() {
            return;
        }
        let epoch = g.record.epoch;
        self.fenced = false;
        if !self.db_open() && !self.opens_pending() {
            self.issue_open(Action::Unfence { epoch }, out);
        }
    }

    pub(super) fn send(
        &mut self,
        purpose: Purpose,
        record: LeaseRecord,
        condition: WriteCondition,
        now: Millis,
        out: &mut Vec<Action>,
    ) {
        let request = RequestId(record.nonce);
        let action = match (purpose, condition) {
            (Purpose::Acquire(trigger), condition) => Action::AcquireLease {
                request,
                record: record.clone(),
                condition,
                trigger,
            },
            (Purpose::Renew, WriteCondition::Matches(expected)) => Action::RenewLease {
                request,
                record: record.clone(),
                expected,
            },
            (Purpose::Release, WriteCondition::Matches(expected)) => Action::ReleaseLease {
                request,
                record: record.clone(),
                expected,
            },
            // Renewals and releases always name the version they replace.
            (Purpose::Renew | Purpose::Release, WriteCondition::Absent) => return,
        };
        self.pending.push(Pending {
            id: request,
            purpose,
            t_send: now,
            record,
            answered: false,
        });
        out.push(action);
    }

    pub(super) fn in_flight(&self, purpose: impl Fn(Purpose) -> bool, now: Millis) -> bool {
        self.pending
            .iter()
            .any(|p| purpose(p.purpose) && !p.answered && now < p.t_send + self.cfg.request_timeout)
    }

    pub(super) fn nonce(&mut self) -> u64 {
        let n = self.next_nonce;
        self.next_nonce += 1;
        n
    }

    /// The record of a takeover from the other site: epoch `epoch`,
    /// stamped with the wall clock (for the cooldown after a restart).
    pub(super) fn takeover_record(&mut self, epoch: u64, now: Millis) -> LeaseRecord {
        let mut record = self.new_record(epoch, 0);
        record.taken_at_ms = self.wall_at(now);
        record
    }

    pub(super) fn new_record(&mut self, epoch: u64, renewals: u64) -> LeaseRecord {
        LeaseRecord {
            format: 1,
            holder: self.id.site.clone(),
            epoch,
            renewals,
            incarnation: self.id.incarnation,
            nonce: self.nonce(),
            ttl_ms: ms(self.cfg.lease_ttl),
            margin_ms: ms(self.cfg.lease_margin),
            released: false,
            successor: None,
            final_lsn: None,
            taken_at_ms: None,
        }
    }

    /// An upper bound of the data a promotion at `now` would lose: the
    /// measured lag plus the true time that may have passed since it was
    /// measured (local elapsed / (1 - drift)). Unknown counts as too much.
    pub(super) fn lag_bound(&self, now: Millis) -> Option<Duration> {
        let (lag, at) = self.lag?;
        Some(self.bound(lag, at, now))
    }

    /// `lag` measured at `at`, plus the true time that may have passed
    /// since.
    fn bound(&self, lag: Duration, at: Millis, now: Millis) -> Duration {
        let elapsed = u128::from(ms(now.saturating_since(at)));
        let slowest = 1_000_000 - u128::from(self.cfg.max_clock_drift_ppm.min(999_999));
        let scaled = (elapsed * 1_000_000).div_ceil(slowest);
        lag.saturating_add(Duration::from_millis(
            u64::try_from(scaled).unwrap_or(u64::MAX),
        ))
    }

    pub(super) fn lag_ok(&self, now: Millis) -> bool {
        self.lag_bound(now)
            .is_some_and(|b| b <= self.cfg.max_data_loss)
    }

    pub(super) fn lag_text(&self, now: Millis) -> String {
        let max = humantime::format_duration(self.cfg.max_data_loss);
        match self.lag_bound(now) {
            None => format!("replication lag unknown (max_data_loss {max})"),
            Some(b) => format!(
                "data loss up to {} exceeds max_data_loss {max}",
                humantime::format_duration(Duration::from_millis(ms(b)))
            ),
        }
    }

    pub(super) fn alert_once(
        &mut self,
        out: &mut Vec<Action>,
        kind: AlertKind,
        version: Option<Version>,
        severity: Severity,
        message: String,
    ) {
        let key = Some((kind, version));
        if self.last_alert != key {
            self.last_alert = key;
            alert(out, severity, kind, message);
        }
    }
}

#[cfg(test)]
mod tests;
