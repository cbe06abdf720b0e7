//! The invariants, checked by the simulated world after every event.

use std::fmt::Write as _;

use warmspare_failover::policy::{Millis, PromoteTrigger};

use crate::world::{Interval, NAMES, Promotion, World};

impl World {
    pub(crate) fn promoted(&mut self, s: usize, epoch: u64, trigger: PromoteTrigger) {
        // A retry after a failed promotion repeats the same site and epoch.
        let retry = self
            .promotions
            .last()
            .is_some_and(|p| p.site == s && p.epoch == epoch);
        let ok = if trigger == PromoteTrigger::Reclaim || retry {
            epoch >= self.max_epoch_promoted
        } else {
            epoch > self.max_epoch_promoted
        };
        if !ok {
            self.violation(format!(
                "{} promoted at epoch {epoch} ({trigger:?}) after epoch {}",
                NAMES[s], self.max_epoch_promoted
            ));
        }
        self.max_epoch_promoted = self.max_epoch_promoted.max(epoch);
        // A promotion while the lease this site holds names the old
        // primary's final position (a switchover, or a restarted agent's
        // reclaim during its wait) comes only once that position, and every
        // write of the old primary (fenced by now), has been replayed here;
        // a forced one excepted. A forced switchover whose final position
        // could not be read names none.
        let (replayed, final_wal) = (self.sites[s].replayed, self.sites[1 - s].wal);
        let named = self
            .register
            .as_ref()
            .filter(|(_, r)| r.holder == NAMES[s] && r.epoch == epoch && !r.released)
            .and_then(|(_, r)| r.final_lsn);
        if let Some(lsn) = named
            && trigger != (PromoteTrigger::Operator { force: true })
            && (replayed < lsn.0 || replayed < final_wal)
        {
            self.violation(format!(
                "{} promoted ({trigger:?}) having replayed up to {replayed}, before the final \
                 position {lsn} named in its lease or the old primary's last write {final_wal}",
                NAMES[s]
            ));
        }
        if trigger == PromoteTrigger::Switchover && named.is_none() {
            self.log(format!("{} promoted by a forced switchover", NAMES[s]));
        }
        self.promotions.push(Promotion {
            at: self.now,
            site: s,
            epoch,
            trigger,
        });
    }

    /// The policy decided to take the lease automatically: the data this
    /// site would lose must be within `max_data_loss` now.
    pub(crate) fn automatic_decision(&mut self, s: usize) {
        let age = self.now - self.sites[s].last_refresh;
        let max = self.p.cfg[s].max_data_loss.as_millis() as u64;
        if age > max {
            self.violation(format!(
                "{} decided an automatic takeover with data age {age}ms > max_data_loss {max}ms",
                NAMES[s]
            ));
        }
    }

    /// Site `s`'s watchdog releases the lease (it fences for it now): only
    /// to a peer whose copy is within `max_data_loss`, which the peer's
    /// own guard then accepts.
    pub(crate) fn watchdog_release(&mut self, s: usize) {
        let o = 1 - s;
        let age = self.now - self.sites[o].last_refresh;
        let max = self.p.cfg[s].max_data_loss.as_millis() as u64;
        if age > max {
            self.violation(format!(
                "{} released the lease to {} whose data is {age}ms old > max_data_loss {max}ms",
                NAMES[s], NAMES[o]
            ));
        }
    }

    pub(crate) fn violation(&mut self, what: String) {
        self.log(format!("VIOLATION {what}"));
        if self.violations.len() < 20 {
            self.violations.push(format!("t={} {what}", self.now));
        }
    }

    /// The invariant check at true time `now`, after an event.
    pub(crate) fn check(&mut self) {
        let t = self.now;
        // A site that accepts traffic writes until now or its deadline.
        for site in &mut self.sites {
            if site.acc.start.is_some() {
                site.wal = site.wal.max(t.min(site.acc.until));
            }
        }
        let mut state = [(false, 0u64, 0u64); 2];
        for (s, st) in state.iter_mut().enumerate() {
            let site = &self.sites[s];
            if let Some(p) = &site.policy {
                let local = Millis(site.clock.local(t));
                if p.may_accept_traffic(local) {
                    let until = p.accepting_until().map_or(u64::MAX, |m| m.0);
                    *st = (true, site.clock.true_at(until), p.epoch().unwrap_or(0));
                }
            }
        }
        // First close every interval that ended, then open new ones.
        for (s, &(acc, _, _)) in state.iter().enumerate() {
            let a = &mut self.sites[s].acc;
            if a.start.is_some() && (!acc || a.until <= t) {
                let end = a.until.min(t);
                a.start = None;
                a.last_end = Some(end);
                if let Some(i) = self.intervals.iter_mut().rev().find(|i| i.site == s) {
                    i.end = Some(end);
                }
            }
        }
        for (s, &(acc, until, epoch)) in state.iter().enumerate() {
            if !acc {
                continue;
            }
            if self.sites[s].acc.start.is_some() {
                self.sites[s].acc.until = until;
                continue;
            }
            let o = 1 - s;
            if self.sites[o].acc.start.is_some() {
                self.violation(format!("{} and {} both accept traffic", NAMES[s], NAMES[o]));
            } else if let Some(end) = self.sites[o].acc.last_end {
                let released_between = self.releases.iter().any(|&r| r >= end && r <= t);
                let gap = t as f64 - end as f64;
                self.gaps
                    .push((gap, self.theoretical_gap(), released_between));
                if gap < 0.0 {
                    self.violation(format!(
                        "{} starts {gap}ms before {} ended",
                        NAMES[s], NAMES[o]
                    ));
                } else if !released_between && gap + 2.0 < self.theoretical_gap() {
                    let msg = format!(
                        "{} starts {gap}ms after {} ended; the safety argument promises {:.1}ms",
                        NAMES[s],
                        NAMES[o],
                        self.theoretical_gap()
                    );
                    self.violation(msg);
                }
            }
            if epoch < self.max_epoch_accepting {
                self.violation(format!(
                    "{} accepts at epoch {epoch} after epoch {}",
                    NAMES[s], self.max_epoch_accepting
                ));
            }
            self.max_epoch_accepting = self.max_epoch_accepting.max(epoch);
            self.log(format!(
                "{} starts accepting traffic (epoch {epoch})",
                NAMES[s]
            ));
            let a = &mut self.sites[s].acc;
            a.start = Some(t);
            a.until = until;
            self.intervals.push(Interval {
                site: s,
                start: t,
                end: None,
                epoch,
            });
        }
    }

    /// A summary of the run, for failure messages.
    pub(crate) fn summary(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "violations: {:#?}", self.violations);
        let _ = writeln!(s, "intervals: {:?}", self.intervals);
        let _ = writeln!(s, "promotions: {:?}", self.promotions);
        let _ = writeln!(s, "log tail:\n{}", self.tail(60));
        s
    }
}
