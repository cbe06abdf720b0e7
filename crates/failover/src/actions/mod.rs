//! What the driver does to the local service when the policy says so:
//! promote, fence, unfence, run hooks, restart (the `on_restart` hooks).
//!
//! [`Actions`] is the seam: the driver calls it in the order the policy
//! returned the actions; the agent plugs in [`PostgresActions`] (with
//! [`Hooks`]), tests plug in a recorder.

mod hooks;
mod postgres;

use std::fmt;

pub use hooks::{HookRole, Hooks};
pub use postgres::{PostgresActions, record_epoch_sql};

use crate::Result;
use crate::policy::{
    AlertKind, FenceReason, HookKind, Lsn, PromoteTrigger, Replay, Role, Severity,
};

/// The side effects of the failover policy on this site.
///
/// # Contract
///
/// * Calls come one at a time, in the order the policy issued them; the
///   driver waits for each to return (bounded by its own timeouts) before
///   the next. [`restart_local`](Actions::restart_local) is the exception:
///   it runs beside them (a slow restart must not delay a fence), at most
///   one at a time, and must return in bounded time (the watchdog waits
///   for its answer). A [`ReleaseLease`](crate::policy::Action::ReleaseLease) is
///   sent only after the preceding [`fence`](Actions::fence) returned.
/// * Every method is **idempotent**: promoting a database that already is
///   primary (with the epoch already recorded), fencing a fenced one, and so
///   on, succeed without changing anything.
/// * An error is logged by the driver and not retried by it. The outcome
///   of [`promote`](Actions::promote) and [`unfence`](Actions::unfence) is
///   reported to the policy, which admits traffic only after a success and
///   tries again after a failure; [`final_lsn`](Actions::final_lsn) and
///   [`replay_position`](Actions::replay_position) answers go to the policy
///   too (a switchover without its final position is abandoned). Other
///   failures only show up in the logs and, for the database, as failing
///   local probes, which the watchdog handles.
/// * `fence` must be fast (it runs when the lease deadline passes): the
///   margin of the lease (1 s by default) plus the gap of the safety
///   argument is its budget.
#[async_trait::async_trait]
pub trait Actions: fmt::Debug + Send + Sync + 'static {
    /// Stop accepting writes now: read-only, terminate sessions. Does not
    /// run hooks (the policy issues [`HookKind::OnFence`] separately).
    async fn fence(&self, reason: FenceReason) -> Result<()>;

    /// Accept writes again; this site holds the lease at `epoch`.
    async fn unfence(&self, epoch: u64) -> Result<()>;

    /// Make the local database a writable primary and record `epoch` in it.
    /// The site accepts traffic only once this has returned `Ok`.
    async fn promote(&self, epoch: u64, trigger: PromoteTrigger) -> Result<()>;

    /// The final WAL position of the local database, just fenced for a
    /// planned switchover: every transaction that committed before the
    /// fence ends at or before it. Switches to a new WAL segment first when
    /// WAL archiving is on, so that a repository-fed standby can fetch the
    /// last one.
    async fn final_lsn(&self) -> Result<Lsn>;

    /// How far the local database has replayed WAL.
    async fn replay_position(&self) -> Result<Replay>;

    /// Run the configured hooks of `kind`.
    async fn run_hook(&self, kind: HookKind, epoch: u64) -> Result<()>;

    /// The watchdog asks for the local service to be restarted; `role` and
    /// `epoch` are the site's when it decided. The default does nothing
    /// but say so.
    async fn restart_local(&self, role: Role, epoch: u64) -> Result<()> {
        tracing::warn!(
            %role,
            epoch,
            "watchdog asked for a restart of the local service; no restart action is configured"
        );
        Ok(())
    }

    /// Tell a human. The default logs through `tracing` at a level matching
    /// the severity.
    async fn alert(&self, severity: Severity, kind: AlertKind, message: &str) {
        log_alert(severity, kind, message);
    }
}

/// Logs an alert at the level matching its severity.
pub fn log_alert(severity: Severity, kind: AlertKind, message: &str) {
    match severity {
        Severity::Info => tracing::info!(?kind, "{message}"),
        Severity::Warning => tracing::warn!(?kind, "{message}"),
        Severity::Critical => tracing::error!(?kind, "{message}"),
    }
}

/// [`PostgresActions`] followed by [`Hooks`]: what a site with a PostgreSQL
/// database and configured hooks does.
#[derive(Debug)]
pub struct SiteActions {
    /// The database actions.
    pub database: PostgresActions,
    /// The hooks.
    pub hooks: Hooks,
}

#[async_trait::async_trait]
impl Actions for SiteActions {
    async fn fence(&self, reason: FenceReason) -> Result<()> {
        self.database.fence(reason).await
    }

    async fn unfence(&self, epoch: u64) -> Result<()> {
        self.database.unfence(epoch).await
    }

    async fn promote(&self, epoch: u64, trigger: PromoteTrigger) -> Result<()> {
        self.database.promote(epoch, trigger).await
    }

    async fn final_lsn(&self) -> Result<Lsn> {
        self.database.final_lsn().await
    }

    async fn replay_position(&self) -> Result<Replay> {
        self.database.replay_position().await
    }

    async fn run_hook(&self, kind: HookKind, epoch: u64) -> Result<()> {
        self.hooks.run(kind, epoch).await
    }

    /// Runs the `on_restart` hooks; without any, only logs the request.
    async fn restart_local(&self, role: Role, epoch: u64) -> Result<()> {
        if self.hooks.on_restart.is_empty() {
            tracing::warn!(
                site = %self.hooks.site,
                %role,
                "watchdog asked for a restart of the local service; no `on_restart` hook is configured"
            );
            return Ok(());
        }
        self.hooks.restart(role, epoch).await
    }
}
