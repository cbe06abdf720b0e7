//! From holding the lease to accepting traffic, and the planned switchover.
//!
//! * **Promotion.** Taking the lease issues [`Action::Promote`]; the site
//!   accepts traffic only after its successful [`Event::PromoteResult`]
//!   (and, after a fence, a successful [`Event::UnfenceResult`]), so that
//!   `/active` never answers 200 before the database takes writes. A failed
//!   promotion is retried every [`OPEN_RETRY`].
//! * **Switchover, holder side.** The holder fences itself and issues
//!   [`Action::CaptureFinalLsn`]; with the answer it releases the lease to
//!   the successor with `final_lsn` in the record. Without an answer
//!   (within `switchover_timeout`) it abandons the switchover and opens its
//!   database again: nothing was handed over.
//! * **Switchover, successor side.** A lease taken with a `final_lsn` is
//!   held (renewed) but not promoted until [`Action::ReadReplayPosition`]
//!   answers a position at or past it. Past `switchover_timeout`, or at
//!   once when the database replays no WAL at all, a critical alert says
//!   so; the site keeps waiting and never promotes silently. An operator's
//!   forced failover promotes it with what it has.
//! * **Cooldown after a restart.** Takeover records carry the taker's wall
//!   clock; a site that observes one recently stamped applies the rest of
//!   the cooldown.

use std::time::Duration;

use super::events::{Action, AlertKind, FenceReason, HookKind, PromoteTrigger, Severity};
use super::machine::{Policy, alert, refuse};
use super::{LeaseRecord, Lsn, Millis, Replay, ms};

/// Delay before a failed promotion or unfence is tried again.
pub(super) const OPEN_RETRY: Duration = Duration::from_secs(2);
/// Time between two reads of the replay position while waiting for it.
pub(super) const REPLAY_POLL: Duration = Duration::from_millis(250);

/// How far the promotion for the lease this site holds has come.
#[derive(Debug, Clone)]
pub(super) struct Promotion {
    pub(super) epoch: u64,
    pub(super) trigger: PromoteTrigger,
    pub(super) stage: Stage,
}

#[derive(Debug, Clone)]
pub(super) enum Stage {
    /// Waiting to replay the old holder's final WAL position.
    AwaitReplay(Await),
    /// [`Action::Promote`] issued, no answer yet.
    Promoting,
    /// The promotion failed; retried at `reopen_at`.
    Failed,
    /// The database is promoted for this lease.
    Done,
}

/// The successor's wait for the final WAL position.
#[derive(Debug, Clone)]
pub(super) struct Await {
    pub(super) lsn: Lsn,
    pub(super) since: Millis,
    pub(super) next_read: Millis,
    /// A read of the replay position in flight since then.
    pub(super) read_sent: Option<Millis>,
    pub(super) replayed: Option<Lsn>,
    /// The critical alert was raised.
    pub(super) stalled: bool,
}

/// A switchover begun by the holder: fenced, waiting for its final WAL
/// position.
#[derive(Debug, Clone)]
pub(super) struct Handover {
    pub(super) to: String,
    /// Hand over without a final position when it cannot be read.
    pub(super) force: bool,
    pub(super) epoch: u64,
    pub(super) since: Millis,
}

impl Policy {
    /// Whether the database is open for traffic: the latest open was
    /// issued after the latest fence, and answered with success.
    pub(super) fn db_open(&self) -> bool {
        self.opens_issued > self.fence_mark
            && self.opens_answered >= self.opens_issued
            && !self.open_failed
    }

    pub(super) fn opens_pending(&self) -> bool {
        self.opens_answered < self.opens_issued
    }

    pub(super) fn issue_open(&mut self, action: Action, out: &mut Vec<Action>) {
        self.opens_issued += 1;
        out.push(action);
    }

    /// Whether the database is promoted for the lease this site holds.
    pub(super) fn promotion_done(&self) -> bool {
        match (&self.grant, &self.promotion) {
            (Some(g), Some(p)) => p.epoch == g.record.epoch && matches!(p.stage, Stage::Done),
            _ => false,
        }
    }

    /// The successor's wait, while it lasts.
    pub(super) fn awaiting(&self) -> Option<&Await> {
        match &self.promotion {
            Some(Promotion {
                stage: Stage::AwaitReplay(w),
                ..
            }) if self.grant.is_some() => Some(w),
            _ => None,
        }
    }

    /// The times at which the promotion or a switchover needs a look.
    pub(super) fn promotion_wakeups(&self) -> Vec<Millis> {
        let mut at = Vec::new();
        if let Some(w) = self.awaiting() {
            at.push(w.next_read);
            if !w.stalled {
                at.push(w.since + self.cfg.switchover_timeout);
            }
            if let Some(t) = w.read_sent {
                at.push(t + self.cfg.request_timeout);
            }
        }
        if let Some(t) = self.reopen_at {
            at.push(t);
        }
        if let Some(h) = &self.handover {
            at.push(h.since + self.cfg.switchover_timeout);
        }
        at
    }

    /// This site just took the lease at `epoch`: promote, or first wait
    /// for `final_lsn`.
    pub(super) fn begin_promotion(
        &mut self,
        epoch: u64,
        trigger: PromoteTrigger,
        final_lsn: Option<Lsn>,
        now: Millis,
        out: &mut Vec<Action>,
    ) {
        let site = self.id.site.clone();
        let (stage, then) = match final_lsn {
            Some(lsn) => (
                Stage::AwaitReplay(Await {
                    lsn,
                    since: now,
                    next_read: now,
                    read_sent: None,
                    replayed: None,
                    stalled: false,
                }),
                format!("it promotes once its database has replayed up to {lsn}"),
            ),
            None => {
                self.issue_open(Action::Promote { epoch, trigger }, out);
                (Stage::Promoting, "promoting its database".to_owned())
            }
        };
        self.promotion = Some(Promotion {
            epoch,
            trigger,
            stage,
        });
        alert(
            out,
            Severity::Warning,
            AlertKind::Acquired,
            format!("{site} holds the lease at epoch {epoch} ({trigger:?}); {then}"),
        );
    }

    pub(super) fn on_promoted(&mut self, epoch: u64, ok: bool, now: Millis, out: &mut Vec<Action>) {
        self.open_answered(ok, now);
        let site = self.id.site.clone();
        let Some(p) = &mut self.promotion else { return };
        if p.epoch != epoch || !matches!(p.stage, Stage::Promoting) {
            return;
        }
        let trigger = p.trigger;
        if !ok {
            p.stage = Stage::Failed;
            alert(
                out,
                Severity::Critical,
                AlertKind::PromotionFailed,
                format!(
                    "{site}: promotion at epoch {epoch} failed; retrying in {}",
                    humantime::format_duration(OPEN_RETRY)
                ),
            );
            return;
        }
        p.stage = Stage::Done;
        if trigger != PromoteTrigger::Reclaim {
            out.push(Action::RunHook {
                kind: HookKind::OnPromote,
                epoch,
            });
        }
        if !matches!(trigger, PromoteTrigger::Initial | PromoteTrigger::Reclaim) {
            alert(
                out,
                Severity::Warning,
                AlertKind::Promoted,
                format!("{site} promoted at epoch {epoch} ({trigger:?})"),
            );
        }
        self.unfence(now, out);
    }

    pub(super) fn on_unfenced(&mut self, epoch: u64, ok: bool, now: Millis, out: &mut Vec<Action>) {
        self.open_answered(ok, now);
        if !ok {
            alert(
                out,
                Severity::Critical,
                AlertKind::PromotionFailed,
                format!(
                    "{}: making the database writable again at epoch {epoch} failed; retrying in {}",
                    self.id.site,
                    humantime::format_duration(OPEN_RETRY)
                ),
            );
        }
    }

    fn open_answered(&mut self, ok: bool, now: Millis) {
        self.opens_answered = (self.opens_answered + 1).min(self.opens_issued);
        self.open_failed = !ok;
        self.reopen_at = (!ok).then_some(now + OPEN_RETRY);
    }

    /// Run after every event: timeouts and retries of the promotion and of
    /// a switchover.
    pub(super) fn advance_promotion(&mut self, now: Millis, out: &mut Vec<Action>) {
        if self.grant.is_none() {
            self.promotion = None;
            self.handover = None;
        }
        if let Some(h) = self.handover.clone()
            && now >= h.since + self.cfg.switchover_timeout
        {
            self.handover_failed(h, "its final WAL position was not read in time", now, out);
        }
        // A promotion or unfence goes out only while the lease is valid: a
        // site whose renewals stopped must not open a database it may no
        // longer be entitled to (another site may have taken over).
        let valid = self.grant.as_ref().is_some_and(|g| g.is_valid(now));
        let retry = valid && self.reopen_at.is_some_and(|t| now >= t);
        let reopen = retry && !self.fenced && !self.db_open() && !self.opens_pending();
        let site = self.id.site.clone();
        let timeout = self.cfg.switchover_timeout;
        let request_timeout = self.cfg.request_timeout;
        let Some(p) = &mut self.promotion else { return };
        let (epoch, trigger) = (p.epoch, p.trigger);
        match &mut p.stage {
            Stage::AwaitReplay(w) => {
                let in_flight = w.read_sent.is_some_and(|t| now < t + request_timeout);
                if !in_flight && now >= w.next_read {
                    w.read_sent = Some(now);
                    w.next_read = now + REPLAY_POLL;
                    out.push(Action::ReadReplayPosition);
                }
                if !w.stalled && now >= w.since + timeout {
                    w.stalled = true;
                    let replayed = w.replayed.map_or("nothing known".into(), |l| l.to_string());
                    let message = format!(
                        "{site} holds the lease at epoch {epoch} but has replayed only up to \
                         {replayed} of the old primary's final WAL position {} after {}: it does \
                         not promote; it promotes when it gets there, or run `warmspare failover \
                         --to {site} --force` to promote it without the missing WAL",
                        w.lsn,
                        humantime::format_duration(timeout)
                    );
                    alert(
                        out,
                        Severity::Critical,
                        AlertKind::SwitchoverStalled,
                        message,
                    );
                }
            }
            Stage::Failed if retry => {
                p.stage = Stage::Promoting;
                self.reopen_at = None;
                self.issue_open(Action::Promote { epoch, trigger }, out);
            }
            Stage::Done if reopen => {
                self.reopen_at = None;
                self.issue_open(Action::Unfence { epoch }, out);
            }
            _ => {}
        }
    }

    pub(super) fn on_replay(&mut self, replay: Replay, now: Millis, out: &mut Vec<Action>) {
        let site = self.id.site.clone();
        let valid = self.grant.as_ref().is_some_and(|g| g.is_valid(now));
        let Some(p) = &mut self.promotion else { return };
        let Stage::AwaitReplay(w) = &mut p.stage else {
            return;
        };
        w.read_sent = None;
        let target = w.lsn;
        let (at, replaying) = match replay {
            Replay::Standby(l) => (Some(l), true),
            Replay::NotReplaying(l) => (l, false),
            Replay::Unknown => return,
        };
        if at.is_some() {
            w.replayed = at;
        }
        if at.is_some_and(|l| l >= target) && !valid {
            // Reached, but the lease lapsed meanwhile: promote only after a
            // renewal landed (the next read answers the same).
        } else if at.is_some_and(|l| l >= target) {
            let waited = humantime::format_duration(Duration::from_millis(ms(
                now.saturating_since(w.since)
            )));
            let (epoch, trigger) = (p.epoch, p.trigger);
            p.stage = Stage::Promoting;
            self.issue_open(Action::Promote { epoch, trigger }, out);
            alert(
                out,
                Severity::Info,
                AlertKind::Replayed,
                format!(
                    "{site} replayed the old primary's final WAL position {target} after {waited}: promoting"
                ),
            );
        } else if !replaying && !w.stalled {
            w.stalled = true;
            let replayed = at.map_or("no WAL".into(), |l| format!("up to {l}"));
            alert(
                out,
                Severity::Critical,
                AlertKind::SwitchoverStalled,
                format!(
                    "{site} holds the lease at epoch {} but its database is not a WAL standby \
                     (it replayed {replayed}) and cannot reach the old primary's final WAL \
                     position {target}: it does not promote; run `warmspare failover --to {site} \
                     --force` to promote it with the data it has",
                    p.epoch
                ),
            );
        }
    }

    /// `failover` given to a successor that waits for the final WAL
    /// position: promote now when forced.
    pub(super) fn force_promotion(&mut self, force: bool, now: Millis, out: &mut Vec<Action>) {
        let site = self.id.site.clone();
        if force && !self.grant.as_ref().is_some_and(|g| g.is_valid(now)) {
            refuse(
                out,
                format!(
                    "failover refused: the lease of {site} is not valid right now (a renewal is \
                     late); try again"
                ),
            );
            return;
        }
        let Some(p) = &mut self.promotion else { return };
        let Stage::AwaitReplay(w) = &p.stage else {
            return;
        };
        let replayed = w.replayed.map_or("nothing known".into(), |l| l.to_string());
        let target = w.lsn;
        if !force {
            refuse(
                out,
                format!(
                    "failover refused: {site} holds the lease and waits to replay the old \
                     primary's final WAL position {target} (replayed: {replayed}); use --force to \
                     promote it without the missing WAL"
                ),
            );
            return;
        }
        let epoch = p.epoch;
        let trigger = PromoteTrigger::Operator { force: true };
        p.trigger = trigger;
        p.stage = Stage::Promoting;
        alert(
            out,
            Severity::Critical,
            AlertKind::CommandAccepted,
            format!(
                "forced failover: promoting {site} at epoch {epoch} without waiting for the old \
                 primary's final WAL position {target} (replayed: {replayed}); transactions \
                 committed after the replayed position are lost"
            ),
        );
        self.issue_open(Action::Promote { epoch, trigger }, out);
    }

    /// `switchover --to to`, accepted: fence, then read the final WAL
    /// position; the release follows its answer.
    pub(super) fn begin_handover(
        &mut self,
        to: String,
        force: bool,
        now: Millis,
        out: &mut Vec<Action>,
    ) {
        let site = self.id.site.clone();
        let Some(epoch) = self.epoch() else { return };
        if self.awaiting().is_some() {
            // This site never promoted for this lease, so nothing was
            // written here: hand back without a position to wait for.
            alert(
                out,
                Severity::Warning,
                AlertKind::CommandAccepted,
                format!(
                    "switchover from {site} to {to}: {site} was never promoted at epoch {epoch}; \
                     releasing the lease"
                ),
            );
            self.release(FenceReason::Switchover, Some(to), None, now, out);
            return;
        }
        alert(
            out,
            Severity::Warning,
            AlertKind::CommandAccepted,
            format!(
                "switchover from {site} to {to}: fencing, then handing the lease over with the \
                 final WAL position; {to} promotes once it has replayed it"
            ),
        );
        self.fence(FenceReason::Switchover, out);
        out.push(Action::CaptureFinalLsn);
        self.handover = Some(Handover {
            to,
            force,
            epoch,
            since: now,
        });
    }

    pub(super) fn on_final_lsn(&mut self, lsn: Option<Lsn>, now: Millis, out: &mut Vec<Action>) {
        let Some(h) = self.handover.clone() else {
            return;
        };
        if self.epoch() != Some(h.epoch) {
            self.handover = None;
            return;
        }
        match lsn {
            Some(lsn) => {
                let site = self.id.site.clone();
                alert(
                    out,
                    Severity::Info,
                    AlertKind::CommandAccepted,
                    format!(
                        "{site} fenced at final WAL position {lsn}: releasing the lease to {}",
                        h.to
                    ),
                );
                self.release(FenceReason::Switchover, Some(h.to), Some(lsn), now, out);
            }
            None => self.handover_failed(h, "its final WAL position could not be read", now, out),
        }
    }

    /// No final position: abandon the switchover, or (forced) hand over
    /// without one.
    fn handover_failed(&mut self, h: Handover, why: &str, now: Millis, out: &mut Vec<Action>) {
        self.handover = None;
        let (site, to) = (self.id.site.clone(), h.to);
        if h.force {
            alert(
                out,
                Severity::Critical,
                AlertKind::CommandAccepted,
                format!(
                    "forced switchover from {site} to {to}: {why}; releasing the lease without \
                     it: {to} promotes with what it has replayed, later transactions are lost"
                ),
            );
            self.release(FenceReason::Switchover, Some(to), None, now, out);
            return;
        }
        alert(
            out,
            Severity::Critical,
            AlertKind::SwitchoverAborted,
            format!(
                "switchover from {site} to {to} abandoned: {why}; {site} keeps the lease and \
                 accepts traffic again (`switchover --force` hands over without the position)"
            ),
        );
        self.unfence(now, out);
    }

    /// The wall clock at `now`, extrapolated on the local clock.
    pub(super) fn wall_at(&self, now: Millis) -> Option<u64> {
        self.wall
            .map(|(unix, at)| unix.saturating_add(ms(now.saturating_since(at))))
    }

    /// A takeover stamped less than `cooldown` ago (by this site's wall
    /// clock) extends the cooldown accordingly.
    pub(super) fn learn_cooldown(&mut self, record: &LeaseRecord, now: Millis) {
        let (Some(taken), Some(wall)) = (record.taken_at_ms, self.wall_at(now)) else {
            return;
        };
        let age = wall.saturating_sub(taken);
        let cooldown = ms(self.cfg.cooldown);
        if age < cooldown {
            let until = now + Duration::from_millis(cooldown - age);
            self.cooldown_until = self.cooldown_until.max(Some(until));
        }
    }
}

#[cfg(test)]
mod tests;
