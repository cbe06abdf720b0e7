//! A deterministic simulated world for the failover policy: two sites running
//! the real [`Policy`], a repository register with real compare-and-swap
//! semantics, a true global time and per-site clocks with bounded rate drift,
//! a network that delays, reorders and loses messages, partitions, stalls,
//! crashes with restarts, and flapping probes.
//!
//! Each site's database carries out the policy's database actions in order,
//! each taking a little time, and answers them; it "writes" WAL while its
//! site accepts traffic (the position is the true time of the last write)
//! and copies the other site's position at every refresh, so that a
//! switchover that promotes before replaying the old primary's final
//! position is caught.
//!
//! The world checks the invariants after every event, at the true time of
//! the event. Between events a site's right to accept traffic can only end
//! (by its deadline passing), never begin, so checking at events with exact
//! interval ends is checking at every instant.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use crate::clock::{Clock, Rng};
use warmspare_failover::policy::{
    Action, AlertKind, Command, Event, FenceReason, LeaseRecord, Lsn, Millis, Policy, PolicyConfig,
    PromoteTrigger, Replay, RequestId, SiteIdentity, Target, Version, WriteCondition, WriteOutcome,
};

pub(crate) const NAMES: [&str; 2] = ["primary", "spare"];
pub(crate) const PRIMARY: usize = 0;
pub(crate) const SPARE: usize = 1;

/// A link of the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Link {
    /// Between a site and the repository.
    Repo(usize),
    /// Between the two sites (probes of the peer).
    Peer,
}

impl Link {
    fn index(self) -> usize {
        match self {
            Link::Repo(s) => s,
            Link::Peer => 2,
        }
    }
}

/// How the world behaves.
#[derive(Debug, Clone)]
pub(crate) struct Params {
    pub cfg: [PolicyConfig; 2],
    pub seed: u64,
    pub max_ppm: i64,
    /// Every clock piece runs at exactly `±max_ppm`.
    pub extreme_clocks: bool,
    /// Mean time between clock-rate changes (0: constant rates).
    pub rate_change_every: u64,
    /// Per link (repo 0, repo 1, peer): one-way delay range, true ms.
    pub delay: [(u64, u64); 3],
    /// Per link: loss probability of each message, per mille.
    pub loss: [u32; 3],
    /// Per site: probability that a probe of a healthy service fails.
    pub flap: [u32; 2],
    /// Per site: driver tick period, true ms.
    pub tick: [u64; 2],
    pub probe_interval: u64,
    /// Drivers also tick exactly at `Policy::next_wakeup`.
    pub exact_wakeups: bool,
    /// Deliver answers that arrive after the driver's timeout reported an
    /// error (a driver that does not cancel requests).
    pub late_answers: bool,
    /// Range of gaps between refreshes of each site's copy (its data age).
    pub refresh_gap: (u64, u64),
    /// The repository ignores conditions (a broken backend).
    pub ignore_conditions: bool,
}

impl Params {
    /// A calm world: exact clocks, 20 ms delays, no loss, no flapping.
    pub(crate) fn calm(cfg: PolicyConfig) -> Self {
        Params {
            cfg: [cfg.clone(), cfg],
            seed: 1,
            max_ppm: 0,
            extreme_clocks: false,
            rate_change_every: 0,
            delay: [(20, 20); 3],
            loss: [0; 3],
            flap: [0; 2],
            tick: [100, 100],
            probe_interval: 1000,
            late_answers: false,
            exact_wakeups: false,
            refresh_gap: (1000, 1000),
            ignore_conditions: false,
        }
    }
}

/// One scheduled occurrence.
#[derive(Debug, Clone)]
enum Ev {
    Tick(usize, u64),
    Wake(usize, u64, u64),
    Probe(usize, u64),
    /// A probe of the peer: its result, and (when it answered) the peer's
    /// report as its agent's `/status` gives it: its data age, or `None`
    /// when it would not take over (paused), measured at a local time.
    PeerProbe(usize, u64, bool, Option<(Option<u64>, Millis)>),
    /// The watchdog's restart of the site's service finished.
    RestartDone(usize, u64),
    Arrive {
        seq: usize,
        site: usize,
        inc: u64,
        req: Req,
    },
    Respond {
        seq: usize,
        site: usize,
        inc: u64,
        event: Event,
    },
    Timeout {
        seq: usize,
        site: usize,
        inc: u64,
        read: bool,
    },
    Crash(usize),
    Restart(usize),
    LinkDown(Link),
    LinkUp(Link),
    AnswersDown(usize, bool),
    SickOn(usize, usize, bool),
    SickOff(usize, usize),
    Stall(u64),
    Command(usize, Command),
    Refresh(usize),
    /// A database action of the site finished.
    DbDone(usize, u64, DbOp),
}

/// A database action, answered when it finishes.
#[derive(Debug, Clone)]
enum DbOp {
    Fence,
    Promote(u64),
    Unfence(u64),
    FinalLsn,
    Replay,
}

#[derive(Debug, Clone)]
enum Req {
    Read,
    Write(RequestId, LeaseRecord, WriteCondition),
}

struct Scheduled {
    at: u64,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Scheduled {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, o: &Self) -> Ordering {
        (o.at, o.seq).cmp(&(self.at, self.seq)) // min-heap
    }
}

/// A period during which a site may accept traffic, in true time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Interval {
    pub site: usize,
    pub start: u64,
    pub end: Option<u64>,
    pub epoch: u64,
}

/// A promotion performed by a site.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Promotion {
    pub at: u64,
    pub site: usize,
    pub epoch: u64,
    pub trigger: PromoteTrigger,
}

#[derive(Debug, Default, Clone)]
pub(crate) struct Accepting {
    pub(crate) start: Option<u64>,
    pub(crate) until: u64,
    pub(crate) last_end: Option<u64>,
}

pub(crate) struct Site {
    pub(crate) policy: Option<Policy>,
    pub(crate) inc: u64,
    pub(crate) clock: Clock,
    /// Active sickness of the local service: (fault id, cured by a restart).
    pub(crate) sick: Vec<(usize, bool)>,
    pub(crate) last_refresh: u64,
    pub(crate) acc: Accepting,
    pub(crate) wake_at: Option<u64>,
    /// The end of the database's WAL: the true time of its last write.
    pub(crate) wal: u64,
    /// How far the database has replayed the other site's WAL.
    pub(crate) replayed: u64,
    /// When the database finishes the actions queued so far.
    pub(crate) db_busy_until: u64,
}

/// The simulated world.
pub(crate) struct World {
    pub p: Params,
    pub(crate) rng: Rng,
    pub now: u64,
    pub(crate) seq: u64,
    queue: BinaryHeap<Scheduled>,
    pub(crate) sites: Vec<Site>,
    pub(crate) register: Option<(u64, LeaseRecord)>,
    pub(crate) next_version: u64,
    pub(crate) link_down: [u32; 3],
    /// Per site: answers from the repository to the site are lost.
    pub(crate) answers_down: [u32; 2],
    pub(crate) stall_until: u64,
    pub(crate) answered: Vec<bool>,
    pub(crate) ids: Vec<Option<RequestId>>,
    pub(crate) max_epoch_promoted: u64,
    pub(crate) max_epoch_accepting: u64,
    pub(crate) next_sick_id: usize,
    /// True times at which a released record was written.
    pub(crate) releases: Vec<u64>,
    pub violations: Vec<String>,
    pub intervals: Vec<Interval>,
    pub promotions: Vec<Promotion>,
    pub alerts: Vec<(u64, usize, AlertKind)>,
    pub restarts: [u32; 2],
    pub lease_writes: usize,
    /// Handovers seen: (gap in true ms, promised gap, after a release).
    pub gaps: Vec<(f64, f64, bool)>,
    pub events: u64,
    pub(crate) log: Vec<String>,
}

impl World {
    pub(crate) fn new(p: Params) -> Self {
        let mut rng = Rng::new(p.seed);
        let horizon = 10_000_000;
        let sites = (0..2)
            .map(|_| {
                let offset = rng.range(0, u64::from(u32::MAX));
                Site {
                    policy: None,
                    inc: 0,
                    clock: Clock::new(
                        &mut rng,
                        offset,
                        p.max_ppm,
                        p.extreme_clocks,
                        p.rate_change_every,
                        horizon,
                    ),
                    sick: Vec::new(),
                    last_refresh: 0,
                    acc: Accepting::default(),
                    wake_at: None,
                    wal: 0,
                    replayed: 0,
                    db_busy_until: 0,
                }
            })
            .collect();
        let mut w = World {
            p,
            rng,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            sites,
            register: None,
            next_version: 1,
            link_down: [0; 3],
            answers_down: [0; 2],
            stall_until: 0,
            answered: Vec::new(),
            ids: Vec::new(),
            max_epoch_promoted: 0,
            max_epoch_accepting: 0,
            next_sick_id: 0,
            releases: Vec::new(),
            violations: Vec::new(),
            intervals: Vec::new(),
            promotions: Vec::new(),
            alerts: Vec::new(),
            restarts: [0; 2],
            lease_writes: 0,
            gaps: Vec::new(),
            events: 0,
            log: Vec::new(),
        };
        for s in 0..2 {
            w.schedule(0, Ev::Restart(s));
            w.schedule(0, Ev::Refresh(s));
        }
        w
    }

    /// Replaces a site's clock (scenarios that need exact drift).
    pub(crate) fn set_clock(&mut self, site: usize, clock: Clock) {
        self.sites[site].clock = clock;
    }

    fn schedule(&mut self, at: u64, ev: Ev) {
        self.seq += 1;
        self.queue.push(Scheduled {
            at,
            seq: self.seq,
            ev,
        });
    }

    // ----- fault injection (scheduled at true time `at`) -------------------

    pub(crate) fn crash_at(&mut self, at: u64, site: usize) {
        self.schedule(at, Ev::Crash(site));
    }
    pub(crate) fn restart_at(&mut self, at: u64, site: usize) {
        self.schedule(at, Ev::Restart(site));
    }
    pub(crate) fn partition(&mut self, from: u64, until: u64, link: Link) {
        self.schedule(from, Ev::LinkDown(link));
        self.schedule(until, Ev::LinkUp(link));
    }
    /// Loses every answer from the repository to `site` (requests still
    /// take effect).
    pub(crate) fn lose_answers(&mut self, from: u64, until: u64, site: usize) {
        self.schedule(from, Ev::AnswersDown(site, true));
        self.schedule(until, Ev::AnswersDown(site, false));
    }
    pub(crate) fn sick(&mut self, from: u64, until: u64, site: usize, cured_by_restart: bool) {
        let id = self.next_sick_id;
        self.next_sick_id += 1;
        self.schedule(from, Ev::SickOn(site, id, cured_by_restart));
        self.schedule(until, Ev::SickOff(site, id));
    }
    pub(crate) fn stall(&mut self, from: u64, duration: u64) {
        self.schedule(from, Ev::Stall(duration));
    }
    pub(crate) fn command_at(&mut self, at: u64, site: usize, command: Command) {
        self.schedule(at, Ev::Command(site, command));
    }
    /// An extra refresh of `site`'s copy (it catches up) at `at`.
    pub(crate) fn refresh_at(&mut self, at: u64, site: usize) {
        self.schedule(at, Ev::Refresh(site));
    }

    // ----- queries ---------------------------------------------------------

    pub(crate) fn accepting(&self, site: usize) -> bool {
        self.sites[site].acc.start.is_some()
    }
    pub(crate) fn local_now(&self, site: usize) -> Millis {
        Millis(self.sites[site].clock.local(self.now))
    }
    pub(crate) fn lease(&self) -> Option<&LeaseRecord> {
        self.register.as_ref().map(|(_, r)| r)
    }
    pub(crate) fn first_start(&self, site: usize, after: u64) -> Option<u64> {
        self.intervals
            .iter()
            .find(|i| i.site == site && i.start >= after)
            .map(|i| i.start)
    }
    pub(crate) fn alerted(&self, site: usize, kind: AlertKind) -> bool {
        self.alerts.iter().any(|&(_, s, k)| s == site && k == kind)
    }
    /// The smallest true-time gap a takeover of an expired lease may have
    /// between the old holder's end and the new holder's start, given the
    /// drift actually drawn and the margin in force.
    pub(crate) fn theoretical_gap(&self) -> f64 {
        let rho = self
            .sites
            .iter()
            .map(|s| s.clock.max_abs_ppm())
            .max()
            .unwrap_or(0) as f64
            / 1e6;
        let c = &self.p.cfg[0];
        let (ttl, m) = (
            c.lease_ttl.as_millis() as f64,
            c.lease_margin.as_millis() as f64,
        );
        (ttl + m) / (1.0 + rho) - (ttl - m) / (1.0 - rho)
    }
    /// The last lines of the event log, for failure messages.
    pub(crate) fn tail(&self, n: usize) -> String {
        self.log[self.log.len().saturating_sub(n)..].join("\n")
    }

    // ----- running ---------------------------------------------------------

    /// Runs every event up to and including true time `until`.
    pub(crate) fn run_until(&mut self, until: u64) {
        let mut same_instant = 0;
        while let Some(top) = self.queue.peek() {
            if top.at > until {
                break;
            }
            let Some(Scheduled { at, ev, .. }) = self.queue.pop() else {
                break;
            };
            same_instant = if at == self.now { same_instant + 1 } else { 0 };
            if same_instant > 10_000 {
                self.violation("livelock: 10000 events without time passing".into());
                return;
            }
            self.now = at;
            self.events += 1;
            self.handle(ev);
            self.check();
        }
        self.now = until;
        self.check();
    }

    /// Runs until `cond` holds or `limit` (true time) passes; returns whether it held.
    pub(crate) fn run_until_cond(&mut self, limit: u64, cond: impl Fn(&World) -> bool) -> bool {
        while self.now < limit {
            let next = (self.now + 10).min(limit);
            self.run_until(next);
            if cond(self) {
                return true;
            }
        }
        cond(self)
    }

    pub(crate) fn log(&mut self, line: String) {
        if self.log.len() > 4000 {
            self.log.drain(..2000);
        }
        self.log.push(format!("{:>8} {line}", self.now));
    }

    fn link_up(&self, link: Link) -> bool {
        self.link_down[link.index()] == 0
    }

    fn delay(&mut self, link: Link) -> u64 {
        let (lo, hi) = self.p.delay[link.index()];
        self.rng.range(lo, hi)
    }

    fn lost(&mut self, link: Link) -> bool {
        !self.link_up(link) || self.rng.chance(self.p.loss[link.index()])
    }

    fn alive(&self, site: usize, inc: u64) -> bool {
        self.sites[site].inc == inc && self.sites[site].policy.is_some()
    }

    fn healthy(&self, site: usize) -> bool {
        self.sites[site].sick.is_empty()
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Tick(s, inc) if self.alive(s, inc) => {
                self.deliver(s, Event::Tick);
                self.schedule(self.now + self.p.tick[s], Ev::Tick(s, inc));
            }
            Ev::Probe(s, inc) if self.alive(s, inc) => {
                let ok = self.healthy(s) && !self.rng.chance(self.p.flap[s]);
                self.deliver(
                    s,
                    Event::Probe {
                        target: Target::Local,
                        ok,
                    },
                );
                let lag = self.now - self.sites[s].last_refresh;
                let measured_at = self.local_now(s);
                self.deliver(
                    s,
                    Event::ReplicationLag {
                        lag: ms(lag),
                        measured_at,
                    },
                );
                let o = 1 - s;
                let peer_ok = self.sites[o].policy.is_some()
                    && self.healthy(o)
                    && !self.rng.chance(self.p.flap[o])
                    && !self.lost(Link::Peer)
                    && !self.lost(Link::Peer);
                let after = if peer_ok {
                    2 * self.delay(Link::Peer)
                } else {
                    2000
                };
                let report = peer_ok.then(|| {
                    let paused = self.sites[o].policy.as_ref().is_some_and(|p| p.is_paused());
                    let age = self.now - self.sites[o].last_refresh;
                    ((!paused).then_some(age), measured_at)
                });
                self.schedule(self.now + after, Ev::PeerProbe(s, inc, peer_ok, report));
                self.schedule(self.now + self.p.probe_interval, Ev::Probe(s, inc));
            }
            Ev::PeerProbe(s, inc, ok, report) if self.alive(s, inc) => {
                self.deliver(
                    s,
                    Event::Probe {
                        target: Target::Peer,
                        ok,
                    },
                );
                if let Some((age, measured_at)) = report {
                    self.deliver(
                        s,
                        Event::PeerLag {
                            lag: age.map(ms),
                            measured_at,
                        },
                    );
                }
            }
            Ev::RestartDone(s, inc) if self.alive(s, inc) => {
                self.sites[s].sick.retain(|&(_, cured)| !cured);
                self.deliver(s, Event::RestartResult { ok: true });
            }
            Ev::Wake(s, inc, at) if self.alive(s, inc) && self.sites[s].wake_at == Some(at) => {
                self.sites[s].wake_at = None;
                self.deliver(s, Event::Tick);
            }
            Ev::Tick(..)
            | Ev::Probe(..)
            | Ev::PeerProbe(..)
            | Ev::Wake(..)
            | Ev::RestartDone(..) => {}
            Ev::Arrive {
                seq,
                site,
                inc,
                req,
            } => self.arrive(seq, site, inc, req),
            Ev::Respond {
                seq,
                site,
                inc,
                event,
            } => {
                if self.answers_down[site] > 0 || self.lost(Link::Repo(site)) {
                    return;
                }
                if self.answered[seq] && !self.p.late_answers {
                    return;
                }
                self.answered[seq] = true;
                if self.alive(site, inc) {
                    self.deliver(site, event);
                }
            }
            Ev::Timeout {
                seq,
                site,
                inc,
                read,
            } => {
                if !self.answered[seq] {
                    self.answered[seq] = true;
                    if self.alive(site, inc) {
                        let event = match self.ids[seq] {
                            Some(request) if !read => Event::LeaseWriteResult {
                                request,
                                outcome: WriteOutcome::Error,
                            },
                            _ => Event::LeaseReadFailed,
                        };
                        self.deliver(site, event);
                    }
                }
            }
            Ev::Crash(s) => {
                self.log(format!("{} crashes", NAMES[s]));
                self.sites[s].policy = None;
            }
            Ev::Restart(s) => self.restart(s),
            Ev::LinkDown(l) => {
                self.log(format!("{l:?} down"));
                self.link_down[l.index()] += 1;
            }
            Ev::AnswersDown(s, down) => {
                self.log(format!(
                    "answers to {} {}",
                    NAMES[s],
                    if down { "lost" } else { "back" }
                ));
                if down {
                    self.answers_down[s] += 1;
                } else {
                    self.answers_down[s] -= 1;
                }
            }
            Ev::LinkUp(l) => {
                self.log(format!("{l:?} up"));
                self.link_down[l.index()] -= 1;
            }
            Ev::SickOn(s, id, cured) => {
                self.log(format!("{} service sick", NAMES[s]));
                self.sites[s].sick.push((id, cured));
            }
            Ev::SickOff(s, id) => self.sites[s].sick.retain(|&(i, _)| i != id),
            Ev::Stall(d) => {
                self.log(format!("repository stalls for {d}ms"));
                self.stall_until = self.stall_until.max(self.now + d);
            }
            Ev::Command(s, c) => {
                self.log(format!("operator -> {}: {c:?}", NAMES[s]));
                self.deliver(s, Event::Command(c));
            }
            Ev::DbDone(s, inc, op) if self.alive(s, inc) => {
                let ok = self.healthy(s);
                let event = match op {
                    DbOp::Fence => return,
                    DbOp::Promote(epoch) => Event::PromoteResult { epoch, ok },
                    DbOp::Unfence(epoch) => Event::UnfenceResult { epoch, ok },
                    DbOp::FinalLsn => Event::FinalLsn {
                        lsn: ok.then_some(Lsn(self.sites[s].wal)),
                    },
                    DbOp::Replay => Event::ReplayPosition {
                        replay: if ok {
                            Replay::Standby(Lsn(self.sites[s].replayed))
                        } else {
                            Replay::Unknown
                        },
                    },
                };
                self.deliver(s, event);
            }
            Ev::DbDone(..) => {}
            Ev::Refresh(s) => {
                let other = self.sites[1 - s].wal;
                let site = &mut self.sites[s];
                site.replayed = site.replayed.max(other);
                self.sites[s].last_refresh = self.now;
                let (lo, hi) = self.p.refresh_gap;
                let gap = self.rng.range(lo, hi).max(1);
                self.schedule(self.now + gap, Ev::Refresh(s));
            }
        }
    }

    fn restart(&mut self, s: usize) {
        let inc = self.rng.next_u64();
        let id = SiteIdentity::new(NAMES[s], NAMES[1 - s], s == PRIMARY, inc);
        let mut policy = match Policy::new(self.p.cfg[s].clone(), id) {
            Ok(p) => p,
            Err(e) => panic!("invalid config: {e}"),
        };
        self.log(format!("{} starts (incarnation {inc:x})", NAMES[s]));
        let now = self.local_now(s);
        let actions = policy.start(now);
        self.sites[s].policy = Some(policy);
        self.sites[s].inc = inc;
        self.sites[s].wake_at = None;
        self.sites[s].db_busy_until = self.now;
        self.perform(s, actions);
        let first_tick = self.rng.range(0, self.p.tick[s]);
        self.schedule(self.now + first_tick, Ev::Tick(s, inc));
        let first_probe = self.rng.range(0, self.p.probe_interval);
        self.schedule(self.now + first_probe, Ev::Probe(s, inc));
    }

    fn deliver(&mut self, s: usize, event: Event) {
        let now = self.local_now(s);
        let Some(policy) = self.sites[s].policy.as_mut() else {
            return;
        };
        let brief = match &event {
            Event::Tick | Event::Probe { .. } | Event::ReplicationLag { .. } => None,
            e => Some(format!("{e:?}")),
        };
        let actions = policy.step(event, now);
        let wake = policy.next_wakeup(now);
        if self.p.exact_wakeups {
            let at = self.sites[s].clock.true_at(wake.0).max(self.now + 1);
            if self.sites[s].wake_at.is_none_or(|w| at < w) {
                self.sites[s].wake_at = Some(at);
                let inc = self.sites[s].inc;
                self.schedule(at, Ev::Wake(s, inc, at));
            }
        }
        if let Some(b) = brief {
            self.log(format!("{} <- {b}", NAMES[s]));
        }
        self.perform(s, actions);
    }

    fn perform(&mut self, s: usize, actions: Vec<Action>) {
        for action in actions {
            match &action {
                Action::Alert { kind, message, .. } => {
                    self.alerts.push((self.now, s, *kind));
                    self.log(format!("{} alert {kind:?}: {message}", NAMES[s]));
                    continue;
                }
                Action::ReadLease => {
                    self.send(s, Req::Read);
                    continue;
                }
                _ => {}
            }
            self.log(format!("{} -> {action:?}", NAMES[s]));
            if let Action::AcquireLease {
                trigger: PromoteTrigger::Automatic,
                ..
            } = action
            {
                self.automatic_decision(s);
            }
            if let Some((id, record, cond)) = action.lease_write() {
                self.send(s, Req::Write(id, record.clone(), cond));
                continue;
            }
            match action {
                Action::Promote { epoch, trigger } => {
                    self.promoted(s, epoch, trigger);
                    self.db(s, DbOp::Promote(epoch));
                }
                Action::Fence { reason } => {
                    if reason == FenceReason::LocalFailure {
                        self.watchdog_release(s);
                    }
                    self.db(s, DbOp::Fence)
                }
                Action::Unfence { epoch } => self.db(s, DbOp::Unfence(epoch)),
                Action::CaptureFinalLsn => self.db(s, DbOp::FinalLsn),
                Action::ReadReplayPosition => {
                    let at = self.now + self.rng.range(0, 50);
                    let inc = self.sites[s].inc;
                    self.schedule(at, Ev::DbDone(s, inc, DbOp::Replay));
                }
                Action::RestartLocal { .. } => {
                    // A restart takes a while; it cures what a restart
                    // cures when it ends.
                    self.restarts[s] += 1;
                    let at = self.now + self.rng.range(100, 2_000);
                    let inc = self.sites[s].inc;
                    self.schedule(at, Ev::RestartDone(s, inc));
                }
                _ => {}
            }
        }
    }

    /// Queues a database action of site `s`: the database carries them out
    /// one after the other, 0–100 ms each.
    fn db(&mut self, s: usize, op: DbOp) {
        let at = self.sites[s].db_busy_until.max(self.now) + self.rng.range(0, 100);
        self.sites[s].db_busy_until = at;
        let inc = self.sites[s].inc;
        self.schedule(at, Ev::DbDone(s, inc, op));
    }

    fn send(&mut self, s: usize, req: Req) {
        let seq = self.answered.len();
        self.answered.push(false);
        let inc = self.sites[s].inc;
        let read = matches!(req, Req::Read);
        self.ids.push(match &req {
            Req::Write(id, ..) => Some(*id),
            Req::Read => None,
        });
        if !self.lost(Link::Repo(s)) {
            let d = self.delay(Link::Repo(s));
            self.schedule(
                self.now + d,
                Ev::Arrive {
                    seq,
                    site: s,
                    inc,
                    req,
                },
            );
        }
        let timeout = self.p.cfg[s].request_timeout.as_millis() as u64;
        self.schedule(
            self.now + timeout,
            Ev::Timeout {
                seq,
                site: s,
                inc,
                read,
            },
        );
    }

    /// A request reaches the repository: it takes effect here, whatever
    /// becomes of its answer.
    fn arrive(&mut self, seq: usize, site: usize, inc: u64, req: Req) {
        if !self.link_up(Link::Repo(site)) {
            return;
        }
        if self.now < self.stall_until {
            let at = self.stall_until;
            self.schedule(
                at,
                Ev::Arrive {
                    seq,
                    site,
                    inc,
                    req,
                },
            );
            return;
        }
        let event = match req {
            Req::Read => Event::LeaseObserved {
                lease: self
                    .register
                    .as_ref()
                    .map(|(v, r)| (version(*v), r.clone())),
            },
            Req::Write(request, record, cond) => {
                let holds = match (&cond, &self.register) {
                    (WriteCondition::Absent, None) => true,
                    (WriteCondition::Matches(v), Some((cur, _))) => *v == version(*cur),
                    _ => false,
                };
                let outcome = if holds || self.p.ignore_conditions {
                    self.apply(site, record);
                    WriteOutcome::Written {
                        version: version(self.next_version - 1),
                    }
                } else {
                    WriteOutcome::Conflict
                };
                Event::LeaseWriteResult { request, outcome }
            }
        };
        if !self.lost(Link::Repo(site)) {
            let d = self.delay(Link::Repo(site));
            self.schedule(
                self.now + d,
                Ev::Respond {
                    seq,
                    site,
                    inc,
                    event,
                },
            );
        }
    }

    fn apply(&mut self, site: usize, record: LeaseRecord) {
        if let Some((_, prev)) = &self.register
            && !self.p.ignore_conditions
            && (record.key() <= prev.key() || record.epoch < prev.epoch)
        {
            let msg = format!(
                "lease history not increasing: {:?} after {:?}",
                record.key(),
                prev.key()
            );
            self.violation(msg);
        }
        if record.released {
            self.releases.push(self.now);
        }
        self.log(format!(
            "repo <- {} epoch {} #{} holder {}{}",
            NAMES[site],
            record.epoch,
            record.renewals,
            record.holder,
            if record.released { " released" } else { "" }
        ));
        self.lease_writes += 1;
        self.register = Some((self.next_version, record));
        self.next_version += 1;
    }
}

fn version(n: u64) -> Version {
    Version::new(format!("\"v{n}\""))
}

pub(crate) fn ms(n: u64) -> std::time::Duration {
    std::time::Duration::from_millis(n)
}
