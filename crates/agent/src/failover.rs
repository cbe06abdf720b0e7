//! Hosting the failover driver of `warmspare-failover` inside the agent.
//!
//! [`Plan::from_config`] decides, without contacting anything, whether this
//! site runs a driver and with what: the policy timing from `[failover]`,
//! this site and its peer (the other `[sites.*]` entry), who creates the
//! lease, the probes of both sites. [`run`] then opens the repository for
//! the lease (bounded timeouts, [`lease_store_config`]), **probes its
//! compare-and-swap first** and only on success starts the driver, the
//! probe runners, for a logical-restore spare the task that reports the
//! age of the newest restored snapshot as replication lag, and, when the
//! peer has an `agent` URL, the task that reads the peer agent's `/status`
//! and tells the driver whether the peer would take the lease over (the
//! watchdog releases the lease only to a peer that would). On shutdown
//! a holder whose local service is healthy releases the lease
//! ([`OnShutdown::ReleaseIfHealthy`]) before the driver stops.
//!
//! What the HTTP endpoints and the jobs see goes through [`Links`]: the
//! driver's handle (or why there is none) and the measurements the jobs
//! make.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::watch;
use warmspare_failover::actions::{Hooks, PostgresActions, SiteActions};
use warmspare_failover::driver::{BootClock, OnShutdown, lease_store_config};
use warmspare_failover::policy::{Event, PolicyConfig, Role, Target};
use warmspare_failover::probe::{Probe, ProbeResult, ProbeRunner, site_probes};
use warmspare_failover::{Driver, DriverConfig, DriverHandle, DriverState, FailoverConfig};
use warmspare_store::object_store::path::Path as ObjectPath;
use warmspare_store::{Store, StoreConfig, probe_cas};

use crate::clock::Clock;
use crate::config::{Config, SiteConfig, SiteMode};
use crate::state::raised;

/// The reason `/active` gives while the driver has not started yet.
pub(crate) const STARTING: &str = "failover driver starting";
/// The reason when the embedder turned failover off.
pub(crate) const DISABLED: &str = "failover disabled by the embedder";

/// Where the driver stands, as the endpoints and jobs see it.
#[derive(Debug, Clone)]
pub(crate) enum Gate {
    /// No driver at this site, and why.
    Off(String),
    /// Being started (compare-and-swap probe in progress).
    Starting,
    /// The driver runs (or ran: its handle then reports "not accepting").
    Running(DriverHandle),
}

/// The measurements the jobs make, for `/metrics`, `/status` and the
/// driver's data-loss guard.
#[derive(Debug, Clone, Default)]
pub(crate) struct Measures {
    /// When the newest snapshot this site wrote was taken.
    pub(crate) last_snapshot: Option<OffsetDateTime>,
    /// Objects copied by `sync` since the agent started.
    pub(crate) sync_objects_total: u64,
    /// Whether a sync ran at all (the counter is exported only then).
    pub(crate) synced: bool,
    /// When the snapshot last restored into this site was taken.
    pub(crate) restored_taken_at: Option<OffsetDateTime>,
}

/// What the driver host, the jobs and the endpoints share.
#[derive(Debug)]
pub(crate) struct Links {
    gate: Mutex<Gate>,
    measures: Mutex<Measures>,
    probes: Mutex<Vec<(Target, watch::Receiver<Vec<ProbeResult>>)>>,
}

impl Links {
    pub(crate) fn new(gate: Gate) -> Self {
        Links {
            gate: Mutex::new(gate),
            measures: Mutex::new(Measures::default()),
            probes: Mutex::new(Vec::new()),
        }
    }

    pub(crate) fn gate(&self) -> Gate {
        self.gate.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set_gate(&self, gate: Gate) {
        *self.gate.lock().unwrap_or_else(|p| p.into_inner()) = gate;
    }

    /// The driver's handle while one exists.
    pub(crate) fn handle(&self) -> Option<DriverHandle> {
        match self.gate() {
            Gate::Running(handle) => Some(handle),
            _ => None,
        }
    }

    /// Why there is no running driver (for error answers and job skips).
    pub(crate) fn no_driver_reason(&self) -> String {
        match self.gate() {
            Gate::Off(reason) => reason,
            Gate::Starting => STARTING.to_owned(),
            Gate::Running(_) => "failover driver stopped".to_owned(),
        }
    }

    pub(crate) fn measures(&self) -> Measures {
        self.measures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(crate) fn update(&self, f: impl FnOnce(&mut Measures)) {
        f(&mut self.measures.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// The latest probe results: `(target, probe name, ok)`.
    pub(crate) fn probe_results(&self) -> Vec<(Target, String, bool)> {
        let probes = self.probes.lock().unwrap_or_else(|p| p.into_inner());
        probes
            .iter()
            .flat_map(|(target, rx)| {
                rx.borrow()
                    .iter()
                    .map(|r| (*target, r.name.clone(), r.ok))
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

/// Whether `state` says this site is a healthy spare: running, not the
/// holder and not accepting, its own service healthy.
pub(crate) fn is_healthy_standby(handle: &DriverHandle, state: &DriverState) -> bool {
    state.running
        && !handle.may_accept_traffic()
        && state.role == Role::Standby
        && state.local == warmspare_failover::policy::Health::Healthy
}

/// Everything the driver needs, decided from the configuration.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub(crate) site: String,
    pub(crate) peer: String,
    pub(crate) initial_holder: bool,
    pub(crate) policy: PolicyConfig,
    pub(crate) failover: FailoverConfig,
    pub(crate) lease_store: StoreConfig,
    pub(crate) database: String,
    pub(crate) local_probes: Vec<Probe>,
    pub(crate) peer_probes: Vec<Probe>,
    /// The peer agent's base URL, when configured.
    pub(crate) peer_agent: Option<String>,
    pub(crate) logical_restore: bool,
}

impl Plan {
    /// The driver plan for `site`, or why it does not run one.
    ///
    /// `initial_holder`: the site that creates the lease when none exists;
    /// by default the site named `primary`, else the first site by name.
    pub(crate) fn from_config(
        config: &Config,
        site: &str,
        initial_holder: Option<&str>,
    ) -> Result<Plan, String> {
        let own = config
            .sites
            .get(site)
            .ok_or_else(|| format!("site `{site}` is not configured"))?;
        let peers: Vec<(&String, &SiteConfig)> =
            config.sites.iter().filter(|(n, _)| *n != site).collect();
        let (peer, peer_config) = match peers.as_slice() {
            [one] => *one,
            [] => return Err("no peer site configured: failover needs two sites".into()),
            _ => {
                return Err(format!(
                    "failover supports exactly two sites; {} are configured",
                    config.sites.len()
                ));
            }
        };
        let holder = match initial_holder {
            Some(name) => {
                if !config.sites.contains_key(name) {
                    return Err(format!("initial lease holder `{name}` is not a site"));
                }
                name.to_owned()
            }
            None if config.sites.contains_key("primary") => "primary".to_owned(),
            None => config.sites.keys().next().cloned().unwrap_or_default(),
        };
        let policy = PolicyConfig::from_failover(&config.failover);
        policy
            .validate()
            .map_err(|e| format!("failover.{}: {}", e.key, e.message))?;
        let lease_store = lease_store_config(&config.repository.store_config(), &policy);
        Ok(Plan {
            site: site.to_owned(),
            peer: peer.clone(),
            initial_holder: holder == site,
            policy,
            failover: config.failover.clone(),
            lease_store,
            database: own.database.expose().to_owned(),
            local_probes: probes_of(own)?,
            peer_probes: probes_of(peer_config)?,
            peer_agent: peer_config.agent.as_ref().map(|a| a.as_str().to_owned()),
            logical_restore: own.mode == SiteMode::LogicalRestore,
        })
    }
}

/// The site's database, plus its `health` targets or else its agent
/// ([`site_probes`]).
fn probes_of(site: &SiteConfig) -> Result<Vec<Probe>, String> {
    let health = site
        .health
        .iter()
        .map(|t| Probe::from_target(t.expose().as_str()).map_err(|e| e.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    let agent = site.agent.as_ref().map(|a| a.as_str().to_owned());
    Ok(site_probes(
        site.database.expose(),
        agent.as_deref(),
        health,
    ))
}

/// Probes the repository's compare-and-swap, then runs the driver, its
/// probes and the lag reporter until `stop` is raised. On a failed probe
/// the gate says why and nothing runs.
pub(crate) async fn run(
    plan: Plan,
    links: Arc<Links>,
    wall: Arc<dyn Clock>,
    mut stop: watch::Receiver<bool>,
) {
    let store = match Store::open(&plan.lease_store) {
        Ok(store) => store,
        Err(error) => {
            let reason = format!("cannot open the repository for the lease: {error}");
            tracing::error!("{reason}; the failover driver does not run");
            links.set_gate(Gate::Off(reason));
            return;
        }
    };
    let scratch = ObjectPath::from(format!(
        "tmp/agent-cas-probe-{}-{}",
        plan.site,
        wall.now().unix_timestamp_nanos()
    ));
    let probed = tokio::select! {
        probed = probe_cas(store.cas().as_ref(), &scratch) => probed,
        () = raised(&mut stop) => return,
    };
    let failure = match probed {
        Ok(report) if report.passed() => None,
        Ok(report) => Some(report.summary()),
        Err(error) => Some(error.to_string()),
    };
    if let Some(why) = failure {
        let reason = format!("repository failed the compare-and-swap probe: {why}");
        tracing::error!(
            repository = %store.display_url(),
            "{reason}; the failover driver does NOT run: this site never accepts traffic \
             and never fails over until the repository is fixed and the agent restarted"
        );
        links.set_gate(Gate::Off(reason));
        return;
    }

    let actions = SiteActions {
        database: PostgresActions::new(plan.database.clone(), plan.site.clone()),
        hooks: Hooks::from_config(plan.site.clone(), &plan.failover),
    };
    let driver = match Driver::new(
        DriverConfig::new(
            plan.policy.clone(),
            &plan.site,
            &plan.peer,
            plan.initial_holder,
        ),
        Arc::clone(store.cas()),
        Arc::new(actions),
        Arc::new(BootClock::new()),
    ) {
        Ok(driver) => driver,
        Err(error) => {
            let reason = format!("cannot start the failover driver: {error}");
            tracing::error!("{reason}");
            links.set_gate(Gate::Off(reason));
            return;
        }
    };
    let handle = driver.handle();
    links.set_gate(Gate::Running(handle.clone()));
    tracing::info!(
        site = %plan.site,
        peer = %plan.peer,
        initial_holder = plan.initial_holder,
        mode = %plan.failover.mode,
        lease_ttl = %humantime::format_duration(plan.policy.lease_ttl),
        "failover driver started"
    );

    let mut tasks = tokio::task::JoinSet::new();
    for (target, probes) in [
        (Target::Local, plan.local_probes.clone()),
        (Target::Peer, plan.peer_probes.clone()),
    ] {
        let (tx, rx) = watch::channel(Vec::new());
        links
            .probes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((target, rx));
        let runner = ProbeRunner {
            target,
            probes,
            interval: plan.failover.interval,
            timeout: plan.failover.timeout,
        };
        tasks.spawn(runner.run(handle.clone(), Arc::new(tx)));
    }
    if plan.logical_restore {
        tasks.spawn(report_restored_age(
            handle.clone(),
            Arc::clone(&links),
            wall,
            plan.failover.interval,
        ));
    }
    if let Some(peer_agent) = plan.peer_agent.clone() {
        tasks.spawn(report_peer_status(
            handle.clone(),
            peer_agent,
            plan.failover.interval,
            plan.failover.timeout,
        ));
    }
    // On shutdown a healthy holder steps down (fence, then a released
    // lease with no successor) so that the peer takes over at its next read
    // rather than after `ttl + margin`. An unhealthy holder leaves the lease
    // to expire: its fence may not even complete (the database it must make
    // read-only is what is failing), and its release would only hand over
    // on the spare's guards, which may refuse it; expiry is the path the
    // safety argument already covers (docs/failover-safety.md).
    let result = driver
        .run_with(raised(&mut stop), OnShutdown::ReleaseIfHealthy)
        .await;
    if let Err(error) = result {
        tracing::error!(%error, "the failover driver stopped with an error");
    }
    tasks.shutdown().await;
    tracing::info!("failover driver stopped");
}

/// For a logical-restore spare: the age of the newest restored snapshot is
/// the data a promotion would lose. Reported every `interval` once a
/// restore has run, so that the driver's `max_data_loss` guard can judge.
async fn report_restored_age(
    handle: DriverHandle,
    links: Arc<Links>,
    wall: Arc<dyn Clock>,
    interval: Duration,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(taken) = links.measures().restored_taken_at else {
            continue;
        };
        let lag = (wall.now() - taken).try_into().unwrap_or(Duration::ZERO);
        let measured_at = handle.clock().now();
        if handle
            .send_event(Event::ReplicationLag { lag, measured_at })
            .await
            .is_err()
        {
            return;
        }
    }
}

/// Reads the peer agent's `/status` every `interval` and reports to the
/// driver whether the peer would take the lease over if it were released
/// now ([`Event::PeerLag`]): its lag when it is a running, unpaused,
/// healthy standby that knows its lag, else "would not" (also when it does
/// not answer). The holder's watchdog releases the lease only on a recent
/// positive report (`docs/failover-safety.md`, "The watchdog").
async fn report_peer_status(
    handle: DriverHandle,
    peer_agent: String,
    interval: Duration,
    timeout: Duration,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let measured_at = handle.clock().now();
        let lag = match warmspare_failover::remote::agent_status(&peer_agent, timeout).await {
            Ok(status) => peer_takeover_lag(&status),
            Err(error) => {
                tracing::debug!(%error, "the peer agent's status is not available");
                None
            }
        };
        let report = Event::PeerLag { lag, measured_at };
        if handle.send_event(report).await.is_err() {
            return;
        }
    }
}

/// From a peer agent's `/status`: its lag, when it would take the lease
/// over now (driver running, role `standby`, not paused, local service
/// healthy, a known lag); `None` otherwise.
fn peer_takeover_lag(status: &serde_json::Value) -> Option<Duration> {
    let f = &status["failover"];
    let ready = f["running"] == true
        && f["role"] == "standby"
        && f["paused"] == false
        && f["local"] == "healthy";
    let lag = f["lag_seconds"].as_f64()?;
    (ready && lag.is_finite() && lag >= 0.0).then(|| Duration::from_secs_f64(lag))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(sites: &[&str], extra: &str) -> Config {
        let mut text = String::from("[repository]\nurl = \"file:///r\"\n");
        for site in sites {
            text.push_str(&format!(
                "[sites.{site}]\ndatabase = \"postgres://u@{site}.example/d\"\n"
            ));
        }
        text.push_str(extra);
        Config::from_toml_str(&text, "t.toml").unwrap()
    }

    #[test]
    fn the_site_named_primary_creates_the_lease_by_default() {
        let c = config(&["primary", "spare"], "");
        let plan = Plan::from_config(&c, "primary", None).unwrap();
        assert!(plan.initial_holder);
        assert_eq!(plan.peer, "spare");
        let plan = Plan::from_config(&c, "spare", None).unwrap();
        assert!(!plan.initial_holder);
        assert_eq!(plan.peer, "primary");
        assert!(plan.logical_restore, "the default site mode");
        // The override, and the first site by name without a `primary`.
        let plan = Plan::from_config(&c, "spare", Some("spare")).unwrap();
        assert!(plan.initial_holder);
        let c = config(&["east", "west"], "");
        assert!(Plan::from_config(&c, "east", None).unwrap().initial_holder);
        assert!(!Plan::from_config(&c, "west", None).unwrap().initial_holder);
        let err = Plan::from_config(&c, "east", Some("north")).unwrap_err();
        assert!(err.contains("`north` is not a site"), "{err}");
    }

    #[test]
    fn failover_needs_exactly_two_sites() {
        let err = Plan::from_config(&config(&["spare"], ""), "spare", None).unwrap_err();
        assert!(err.starts_with("no peer site configured"), "{err}");
        let err = Plan::from_config(&config(&["a", "b", "c"], ""), "a", None).unwrap_err();
        assert!(err.contains("exactly two sites"), "{err}");
    }

    #[test]
    fn probes_default_to_the_database_or_follow_health_targets() {
        // The extra line belongs to the last table, [sites.spare].
        let c = config(
            &["primary", "spare"],
            "health = [\"tcp://10.0.0.9:8080\"]\n",
        );
        let plan = Plan::from_config(&c, "primary", None).unwrap();
        assert_eq!(plan.local_probes.len(), 1);
        assert!(plan.local_probes[0].name().contains("primary.example"));
        // The database stays probed next to the listed targets: it is what
        // measures a standby's replay lag for `max_data_loss`.
        assert_eq!(
            plan.peer_probes,
            [
                Probe::Postgres {
                    url: "postgres://u@spare.example/d".into(),
                    write_check: false
                },
                Probe::Tcp {
                    addr: "10.0.0.9:8080".into()
                }
            ]
        );
        // Lease requests are bounded by the policy's request timeout.
        assert_eq!(plan.lease_store.timeout, Some(plan.policy.request_timeout));
        assert_eq!(plan.peer_agent, None);
    }

    #[test]
    fn new_failover_keys_reach_the_policy_and_the_hooks() {
        let c = config(
            &["primary", "spare"],
            "agent = \"http://10.0.0.9:9750\"\n\
             [failover]\nswitchover_timeout = \"3m\"\non_restart = [\"systemctl restart postgresql\"]\n",
        );
        let plan = Plan::from_config(&c, "primary", None).unwrap();
        assert_eq!(plan.policy.switchover_timeout, Duration::from_secs(180));
        assert_eq!(plan.peer_agent.as_deref(), Some("http://10.0.0.9:9750"));
        let hooks = Hooks::from_config("primary", &plan.failover);
        assert_eq!(hooks.on_restart, ["systemctl restart postgresql"]);
    }

    #[test]
    fn a_peer_takes_over_only_as_a_healthy_unpaused_standby_with_a_lag() {
        let status = |role: &str, paused: bool, local: &str, lag: serde_json::Value| {
            serde_json::json!({
                "failover": {
                    "running": true, "role": role, "paused": paused,
                    "local": local, "lag_seconds": lag,
                }
            })
        };
        assert_eq!(
            peer_takeover_lag(&status("standby", false, "healthy", 2.5.into())),
            Some(Duration::from_millis(2500))
        );
        for no in [
            status("standby", true, "healthy", 2.5.into()),
            status("standby", false, "unhealthy", 2.5.into()),
            status("primary", false, "healthy", 0.into()),
            status("standby", false, "healthy", serde_json::Value::Null),
            serde_json::json!({ "failover": { "running": false, "reason": "x" } }),
        ] {
            assert_eq!(peer_takeover_lag(&no), None, "{no}");
        }
    }
}
