//! [`Agent`]: the composition of the configuration, the scheduler and the
//! HTTP endpoints, and how it starts and stops.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::clock::{Clock, SystemClock};
use crate::config::{Config, Secret};
use crate::failover::{Gate, Links, Plan};
use crate::http::auth::TokenDigest;
use crate::job::{JOB_NAMES, Job};
use crate::state::{JobSlot, Shared};
use crate::{Error, Result};

pub use crate::config::DEFAULT_JOB_TIMEOUT;
/// Default time a cancelled run (timeout, shutdown) has to stop by itself
/// before it is dropped: the default of `[agent] shutdown_grace`
/// ([`DEFAULT_SHUTDOWN_GRACE`](crate::config::DEFAULT_SHUTDOWN_GRACE)).
pub const DEFAULT_CANCEL_GRACE: Duration = crate::config::DEFAULT_SHUTDOWN_GRACE;

/// What the embedder decides beyond the configuration file: the site
/// override, the token, the job implementations, timeouts and the clock.
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use warmspare_agent::{AgentOptions, FnJob, JobOutcome};
///
/// let options = AgentOptions::new()
///     .site("spare")
///     .job(Arc::new(FnJob::new("sync", |_ctx| async { Ok(JobOutcome::done()) })))
///     .job_timeout_for("sync", Duration::from_secs(600));
/// # let _ = options;
/// ```
#[derive(Clone)]
pub struct AgentOptions {
    site: Option<String>,
    listen: Option<SocketAddr>,
    token: Option<Secret>,
    jobs: Vec<Arc<dyn Job>>,
    job_timeout: Option<Duration>,
    job_timeouts: BTreeMap<String, Duration>,
    cancel_grace: Option<Duration>,
    clock: Arc<dyn Clock>,
    failover: bool,
    initial_holder: Option<String>,
    standard_jobs: bool,
    encryption_key: Option<warmspare_store::EncryptionKey>,
}

impl Default for AgentOptions {
    fn default() -> Self {
        AgentOptions {
            site: None,
            listen: None,
            token: None,
            jobs: Vec::new(),
            job_timeout: None,
            job_timeouts: BTreeMap::new(),
            cancel_grace: None,
            clock: Arc::new(SystemClock),
            failover: true,
            initial_holder: None,
            standard_jobs: false,
            encryption_key: None,
        }
    }
}

impl fmt::Debug for AgentOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentOptions")
            .field("site", &self.site)
            .field("listen", &self.listen)
            .field("token", &self.token)
            .field(
                "jobs",
                &self.jobs.iter().map(|j| j.name()).collect::<Vec<_>>(),
            )
            .field("job_timeout", &self.job_timeout)
            .field("job_timeouts", &self.job_timeouts)
            .field("cancel_grace", &self.cancel_grace)
            .field("failover", &self.failover)
            .field("initial_holder", &self.initial_holder)
            .field("standard_jobs", &self.standard_jobs)
            .field("encryption_key", &self.encryption_key)
            .finish_non_exhaustive()
    }
}

impl AgentOptions {
    /// Defaults: the config's site and listener, no token (mutating
    /// endpoints refused), no jobs, the config's job timeouts (`[jobs]`)
    /// and cancel grace (`[agent] shutdown_grace`, by default
    /// [`DEFAULT_CANCEL_GRACE`]), the system clock.
    pub fn new() -> Self {
        AgentOptions::default()
    }

    /// Runs as site `name` instead of the config's `site` (`--site`).
    pub fn site(mut self, name: impl Into<String>) -> Self {
        self.site = Some(name.into());
        self
    }

    /// Listens on `addr` instead of the config's `agent.listen` (port 0
    /// picks a free port; see [`BoundAgent::local_addr`]).
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = Some(addr);
        self
    }

    /// The bearer token that `POST /pause`, `/resume` and `/failover`
    /// require. Without one they answer 403.
    pub fn token(mut self, token: Secret) -> Self {
        self.token = Some(token);
        self
    }

    /// Registers the implementation of a job; its name (one of
    /// [`JOB_NAMES`]) picks its schedule from the config.
    pub fn job(mut self, job: Arc<dyn Job>) -> Self {
        self.jobs.push(job);
        self
    }

    /// Limit on one run of any job whose timeout the configuration's
    /// `[jobs]` table does not set, instead of the per-job default
    /// ([`JobsConfig::default_timeout`](crate::config::JobsConfig::default_timeout):
    /// [`DEFAULT_JOB_TIMEOUT`], 12 h for `physical_backup`).
    pub fn job_timeout(mut self, timeout: Duration) -> Self {
        self.job_timeout = Some(timeout);
        self
    }

    /// Limit on one run of the job `name`, overriding the configuration's
    /// `[jobs]` table and [`AgentOptions::job_timeout`].
    pub fn job_timeout_for(mut self, name: impl Into<String>, timeout: Duration) -> Self {
        self.job_timeouts.insert(name.into(), timeout);
        self
    }

    /// Time a cancelled run has to stop by itself before it is dropped,
    /// and the HTTP server to finish requests at shutdown, overriding the
    /// configuration's `[agent] shutdown_grace`.
    pub fn cancel_grace(mut self, grace: Duration) -> Self {
        self.cancel_grace = Some(grace);
        self
    }

    /// The clock that schedules and timeouts follow.
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Whether the agent hosts the failover driver (default: yes, when the
    /// configuration has exactly two sites). Off: `/active` and
    /// `/standby` answer 503 and `/failover` is refused.
    pub fn failover(mut self, enabled: bool) -> Self {
        self.failover = enabled;
        self
    }

    /// The site that creates the lease when none exists yet, instead of
    /// the default: the site named `primary`, else the first site by name.
    pub fn initial_holder(mut self, site: impl Into<String>) -> Self {
        self.initial_holder = Some(site.into());
        self
    }

    /// Registers the built-in implementations of `backup`,
    /// `physical_backup`, `sync`, `restore`, `verify` and `prune`
    /// ([`crate::jobs`]) for every job name the embedder did not register
    /// itself.
    pub fn standard_jobs(mut self) -> Self {
        self.standard_jobs = true;
        self
    }

    /// The repository's encryption key, read by the caller from
    /// `[repository] encryption_key_file` (this crate reads no files). The
    /// built-in jobs need it when the file is configured; without it they
    /// refuse to write or read encrypted data, loudly.
    pub fn encryption_key(mut self, key: warmspare_store::EncryptionKey) -> Self {
        self.encryption_key = Some(key);
        self
    }
}

/// The agent of one site, configured and ready to bind its listener.
///
/// ```no_run
/// # async fn example(config: warmspare_agent::Config) -> warmspare_agent::Result<()> {
/// use warmspare_agent::{Agent, AgentOptions};
///
/// let shutdown = async { let _ = tokio::signal::ctrl_c().await; };
/// Agent::new(config, AgentOptions::new())?.run(shutdown).await
/// # }
/// ```
pub struct Agent {
    shared: Arc<Shared>,
    listen: SocketAddr,
    cancel_grace: Duration,
    plan: Option<Plan>,
}

impl fmt::Debug for Agent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Agent")
            .field("site", &self.shared.site)
            .field("listen", &self.listen)
            .finish_non_exhaustive()
    }
}

impl Agent {
    /// Checks the configuration and options and builds the agent; nothing
    /// runs until [`Agent::run`] or [`Agent::bind`].
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when the configuration is invalid, names no site
    /// or an unknown one; [`Error::Options`] for an unknown or twice
    /// registered job name, an empty token, or a zero timeout.
    pub fn new(mut config: Config, options: AgentOptions) -> Result<Agent> {
        if let Some(site) = &options.site {
            config.select_site(site)?;
        }
        config.validate()?;
        let site = match config.current_site() {
            Some((name, _)) => name.to_owned(),
            None => {
                return Err(Error::Config(crate::config::ConfigError {
                    origin: "configuration".into(),
                    line: None,
                    column: None,
                    key: Some("site".into()),
                    message: "the agent needs to know which site it is: set `site` or pass --site"
                        .into(),
                }));
            }
        };

        let invalid = |message: String| Err(Error::Options(message));
        if options
            .token
            .as_ref()
            .is_some_and(|t| t.expose().trim().is_empty())
        {
            return invalid("the bearer token is empty".into());
        }
        if options.job_timeout.is_some_and(|t| t.is_zero())
            || options.job_timeouts.values().any(Duration::is_zero)
        {
            return invalid("job timeouts must be greater than zero".into());
        }
        for name in options.job_timeouts.keys() {
            if !JOB_NAMES.contains(&name.as_str()) {
                return invalid(format!("timeout for unknown job `{name}`"));
            }
        }
        let plan = if options.failover {
            Plan::from_config(&config, &site, options.initial_holder.as_deref())
        } else {
            Err(crate::failover::DISABLED.to_owned())
        };
        let links = Arc::new(Links::new(match &plan {
            Ok(_) => Gate::Starting,
            Err(reason) => Gate::Off(reason.clone()),
        }));
        if let Err(reason) = &plan {
            tracing::info!(%reason, "no failover driver at this site");
        }
        let mut all_jobs = options.jobs.clone();
        if options.standard_jobs {
            let taken: Vec<String> = all_jobs.iter().map(|j| j.name().to_owned()).collect();
            for job in crate::jobs::standard(
                &config,
                &site,
                &links,
                &options.clock,
                options.encryption_key.clone(),
            ) {
                if !taken.iter().any(|t| t == job.name()) {
                    all_jobs.push(job);
                }
            }
        }
        let mut registered: BTreeMap<&str, Arc<dyn Job>> = BTreeMap::new();
        for job in &all_jobs {
            let name = job.name();
            if !JOB_NAMES.contains(&name) {
                return invalid(format!(
                    "unknown job `{name}` (the jobs are {})",
                    JOB_NAMES.join(", ")
                ));
            }
            if registered.insert(name, job.clone()).is_some() {
                return invalid(format!("job `{name}` is registered twice"));
            }
        }

        let mut jobs = Vec::new();
        for name in JOB_NAMES {
            let schedule = config.schedule.get(name);
            let job = registered.remove(name);
            if schedule.is_none() && job.is_none() {
                continue;
            }
            // The most specific setting wins: the embedder's for this job,
            // the file's for this job, the embedder's for every job, the
            // job's default.
            let timeout = options
                .job_timeouts
                .get(name)
                .copied()
                .or_else(|| config.jobs.timeout(name))
                .or(options.job_timeout)
                .unwrap_or_else(|| crate::config::JobsConfig::default_timeout(name));
            jobs.push(JobSlot::new(name, schedule, job, timeout));
        }

        let clock = options.clock;
        let shared = Shared {
            site,
            started_at: clock.now(),
            clock,
            jobs,
            paused: watch::Sender::new(false),
            token: options.token.as_ref().map(TokenDigest::new),
            links,
        };
        Ok(Agent {
            shared: Arc::new(shared),
            listen: options.listen.unwrap_or(config.agent.listen),
            cancel_grace: options.cancel_grace.unwrap_or(config.agent.shutdown_grace),
            plan: plan.ok(),
        })
    }

    /// The site this agent runs as.
    pub fn site(&self) -> &str {
        &self.shared.site
    }

    /// How long running jobs get to stop at shutdown (and after their
    /// time limit) before they are dropped: [`AgentOptions::cancel_grace`]
    /// if given, else `[agent] shutdown_grace`.
    pub fn shutdown_grace(&self) -> Duration {
        self.cancel_grace
    }

    /// The jobs the configuration schedules but no implementation was
    /// registered for: they never run, and `/status` says `not_available`.
    pub fn unavailable_jobs(&self) -> Vec<&str> {
        self.shared
            .jobs
            .iter()
            .filter(|slot| slot.job.is_none())
            .map(|slot| &*slot.name)
            .collect()
    }

    /// Binds the listener; the agent then runs with [`BoundAgent::run`].
    ///
    /// # Errors
    ///
    /// [`Error::Bind`] when the address cannot be bound.
    pub async fn bind(self) -> Result<BoundAgent> {
        let listener = TcpListener::bind(self.listen)
            .await
            .map_err(|source| Error::Bind {
                addr: self.listen,
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| Error::Bind {
            addr: self.listen,
            source,
        })?;
        Ok(BoundAgent {
            agent: self,
            listener,
            local_addr,
        })
    }

    /// Binds, serves and schedules until `shutdown` completes; see
    /// [`BoundAgent::run`].
    ///
    /// # Errors
    ///
    /// [`Error::Bind`] when the listener cannot be bound.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<()> {
        self.bind().await?.run(shutdown).await
    }
}

/// An [`Agent`] whose listener is bound.
#[derive(Debug)]
pub struct BoundAgent {
    agent: Agent,
    listener: TcpListener,
    local_addr: SocketAddr,
}

impl BoundAgent {
    /// The address the HTTP endpoints are served on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves the endpoints and runs the schedules until `shutdown`
    /// completes. Then it stops scheduling and accepting connections,
    /// asks running jobs to cancel, waits up to the cancel grace period for
    /// them (dropping those that do not stop), and returns.
    ///
    /// # Errors
    ///
    /// None today; the `Result` leaves room for the failover driver.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<()> {
        let BoundAgent {
            agent,
            listener,
            local_addr,
        } = self;
        let shared = agent.shared;
        for slot in &shared.jobs {
            tracing::info!(
                job = %slot.name,
                schedule = slot.schedule.map(|s| s.to_string()),
                available = slot.job.is_some(),
                "job"
            );
        }
        tracing::info!(site = %shared.site, listen = %local_addr, "agent started");

        let (stop, stopped) = watch::channel(false);
        // The driver runs beside the scheduler and the server, inside this
        // future: dropping `run` stops its renewals too (a dead agent must
        // fail closed). It starts fenced and stops when `stop` is raised.
        let failover = {
            let (plan, links, clock, stopped) = (
                agent.plan,
                shared.links.clone(),
                shared.clock.clone(),
                stopped.clone(),
            );
            async move {
                if let Some(plan) = plan {
                    crate::failover::run(plan, links, clock, stopped).await;
                }
            }
        };
        let scheduler = crate::scheduler::run(shared.clone(), stopped.clone(), agent.cancel_grace);
        let server = crate::http::serve(listener, shared.clone(), stopped, agent.cancel_grace);
        let trigger = async {
            shutdown.await;
            tracing::info!("shutting down");
            let _ = stop.send(true);
        };
        tokio::join!(scheduler, server, trigger, failover);
        tracing::info!("agent stopped");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FnJob, JobOutcome};

    fn config(site: Option<&str>) -> Config {
        let site = site
            .map(|s| format!("site = \"{s}\"\n"))
            .unwrap_or_default();
        Config::from_toml_str(
            &format!(
                "{site}[repository]\nurl = \"file:///r\"\n\
                 [sites.primary]\ndatabase = \"postgres://u@h/d\"\n\
                 [sites.spare]\ndatabase = \"postgres://u@h/d\"\n\
                 [schedule]\nbackup = \"every 1m\"\nverify = \"0 3 * * *\"\n"
            ),
            "t.toml",
        )
        .unwrap()
    }

    fn job(name: &str) -> Arc<dyn Job> {
        Arc::new(FnJob::new(name, |_| async { Ok(JobOutcome::done()) }))
    }

    fn refused(config: Config, options: AgentOptions) -> String {
        Agent::new(config, options).unwrap_err().to_string()
    }

    #[test]
    fn the_site_comes_from_the_config_or_the_override() {
        let agent = Agent::new(config(Some("primary")), AgentOptions::new()).unwrap();
        assert_eq!(agent.site(), "primary");
        let agent = Agent::new(config(Some("primary")), AgentOptions::new().site("spare")).unwrap();
        assert_eq!(agent.site(), "spare");
        let err = refused(config(None), AgentOptions::new());
        assert!(
            err.contains("key `site`") && err.contains("--site"),
            "{err}"
        );
        let err = refused(config(None), AgentOptions::new().site("elsewhere"));
        assert!(err.contains("\"elsewhere\""), "{err}");
    }

    #[test]
    fn jobs_are_matched_to_schedules_by_name() {
        let agent = Agent::new(
            config(Some("spare")),
            AgentOptions::new().job(job("backup")).job(job("prune")),
        )
        .unwrap();
        let names: Vec<_> = agent.shared.jobs.iter().map(|s| &*s.name).collect();
        assert_eq!(names, ["backup", "verify", "prune"]);
        assert_eq!(agent.unavailable_jobs(), ["verify"]);
        assert!(agent.shared.jobs[0].is_schedulable());
        assert!(
            !agent.shared.jobs[2].is_schedulable(),
            "prune has no schedule"
        );
    }

    #[test]
    fn bad_options_are_refused() {
        let c = || config(Some("spare"));
        let err = refused(c(), AgentOptions::new().job(job("backups")));
        assert!(err.contains("unknown job `backups`"), "{err}");
        let err = refused(c(), AgentOptions::new().job(job("sync")).job(job("sync")));
        assert!(err.contains("registered twice"), "{err}");
        let err = refused(c(), AgentOptions::new().token(Secret::new(" \n")));
        assert!(err.contains("token is empty"), "{err}");
        let err = refused(c(), AgentOptions::new().job_timeout(Duration::ZERO));
        assert!(err.contains("greater than zero"), "{err}");
        let err = refused(
            c(),
            AgentOptions::new().job_timeout_for("nope", Duration::from_secs(1)),
        );
        assert!(err.contains("unknown job `nope`"), "{err}");
    }

    fn timeouts(agent: &Agent) -> Vec<(&str, Duration)> {
        agent
            .shared
            .jobs
            .iter()
            .map(|s| (&*s.name, s.timeout))
            .collect()
    }

    #[test]
    fn job_timeouts_come_from_the_options_the_file_or_the_defaults() {
        let text = "site = \"primary\"\n[repository]\nurl = \"file:///r\"\n\
                    [sites.primary]\ndatabase = \"postgres://u@h/d\"\n\
                    [schedule]\nbackup = \"every 1m\"\nphysical_backup = \"@daily\"\n\
                    sync = \"every 1m\"\nverify = \"@daily\"\n\
                    [jobs]\nbackup = { timeout = \"20m\" }\nsync = { timeout = \"5m\" }\n";
        let config = Config::from_toml_str(text, "t.toml").unwrap();
        let min = |m: u64| Duration::from_secs(m * 60);
        let agent = Agent::new(config.clone(), AgentOptions::new()).unwrap();
        assert_eq!(
            timeouts(&agent),
            [
                ("backup", min(20)),
                ("physical_backup", min(12 * 60)),
                ("sync", min(5)),
                ("verify", min(6 * 60)),
            ]
        );
        let agent = Agent::new(
            config,
            AgentOptions::new()
                .job_timeout(min(1))
                .job_timeout_for("sync", min(2)),
        )
        .unwrap();
        assert_eq!(
            timeouts(&agent),
            [
                ("backup", min(20)),
                ("physical_backup", min(1)),
                ("sync", min(2)),
                ("verify", min(1)),
            ]
        );
    }

    #[test]
    fn the_shutdown_grace_comes_from_the_options_the_file_or_the_default() {
        let agent = Agent::new(config(Some("spare")), AgentOptions::new()).unwrap();
        assert_eq!(agent.shutdown_grace(), DEFAULT_CANCEL_GRACE);
        assert_eq!(DEFAULT_CANCEL_GRACE, Duration::from_secs(30));
        let mut file = config(Some("spare"));
        file.agent.shutdown_grace = Duration::from_secs(90);
        let agent = Agent::new(file.clone(), AgentOptions::new()).unwrap();
        assert_eq!(agent.shutdown_grace(), Duration::from_secs(90));
        let agent = Agent::new(
            file,
            AgentOptions::new().cancel_grace(Duration::from_secs(5)),
        )
        .unwrap();
        assert_eq!(
            agent.shutdown_grace(),
            Duration::from_secs(5),
            "the embedder's option wins"
        );
        // A configuration built in code is validated too.
        let mut zero = config(Some("spare"));
        zero.agent.shutdown_grace = Duration::ZERO;
        let err = refused(zero, AgentOptions::new());
        assert!(err.contains("agent.shutdown_grace"), "{err}");
    }

    #[test]
    fn debug_output_never_shows_the_token() {
        let options = AgentOptions::new().token(Secret::new("hunter2-token"));
        let text = format!("{options:?}");
        assert!(!text.contains("hunter2"), "{text}");
    }
}
