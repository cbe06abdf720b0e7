//! [`probe_cas`]: does this backend really keep the compare-and-swap
//! contract?

use std::fmt;

use bytes::Bytes;
use object_store::path::Path;
use serde::Serialize;

use super::{CompareAndSwap, Version};
use crate::error::{Error, Result};

/// One step of the probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum CasProbeStepKind {
    /// Create-if-absent of a new object succeeds.
    Create,
    /// A second create-if-absent of the same object fails and changes
    /// nothing.
    SecondCreateRejected,
    /// An update with the current version succeeds and is visible.
    UpdateWithCurrentVersion,
    /// An update with a stale version fails and changes nothing.
    StaleUpdateRejected,
    /// An update of a missing object fails and creates nothing.
    UpdateOfMissingRejected,
    /// The probe objects are removed.
    Cleanup,
}

impl fmt::Display for CasProbeStepKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Create => "create-if-absent",
            Self::SecondCreateRejected => "second create-if-absent rejected",
            Self::UpdateWithCurrentVersion => "update with current version",
            Self::StaleUpdateRejected => "update with stale version rejected",
            Self::UpdateOfMissingRejected => "update of missing object rejected",
            Self::Cleanup => "cleanup",
        })
    }
}

/// The outcome of one probe step.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CasProbeStep {
    /// Which step.
    pub kind: CasProbeStepKind,
    /// Whether the backend behaved as the contract requires.
    pub ok: bool,
    /// What happened, one line (empty when ok).
    pub detail: String,
}

/// What [`probe_cas`] found, step by step.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CasProbeReport {
    /// Every step, in order.
    pub steps: Vec<CasProbeStep>,
}

impl CasProbeReport {
    /// Whether every step behaved as required. Only then may anything
    /// (the lease, automatic failover) rely on the backend's
    /// compare-and-swap.
    pub fn passed(&self) -> bool {
        !self.steps.is_empty() && self.steps.iter().all(|s| s.ok)
    }

    /// The first step that misbehaved.
    pub fn first_failure(&self) -> Option<&CasProbeStep> {
        self.steps.iter().find(|s| !s.ok)
    }

    /// One line: `ok`, or the first failing step and why.
    pub fn summary(&self) -> String {
        match self.first_failure() {
            None => "ok".to_string(),
            Some(step) => format!("{}: {}", step.kind, step.detail),
        }
    }

    fn push(&mut self, kind: CasProbeStepKind, outcome: Result<(), String>) -> bool {
        let ok = outcome.is_ok();
        self.steps.push(CasProbeStep {
            kind,
            ok,
            detail: outcome.err().unwrap_or_default(),
        });
        ok
    }
}

/// Exercises `cas` under `scratch` (two objects, `scratch/probe` and
/// `scratch/missing`, removed afterwards) and reports whether it keeps the
/// [`CompareAndSwap`] contract: create works, a second create fails, an
/// update with the current version works, a stale update fails, an update
/// of a missing object fails. A backend that *succeeds* where it must fail
/// (Garage 2.5.0 ignores `If-None-Match` and `If-Match`) is reported, not
/// trusted.
///
/// Use a fresh scratch prefix (for example `tmp/check-<random>`). Errors
/// from the backend become failed steps; `Err` is returned only for an
/// unusable scratch path.
pub async fn probe_cas(cas: &dyn CompareAndSwap, scratch: &Path) -> Result<CasProbeReport> {
    if scratch.as_ref().is_empty() {
        return Err(Error::InvalidPath {
            path: String::new(),
            reason: "the probe needs a scratch prefix".into(),
        });
    }
    let probe = scratch.clone().join("probe");
    let missing = scratch.clone().join("missing");
    let nonce: u64 = rand::random();
    let content = |step: &str| Bytes::from(format!("warmspare cas probe {step} {nonce:016x}\n"));
    let mut report = CasProbeReport { steps: Vec::new() };

    // 1. Create.
    let first = content("create");
    let created = cas.create(&probe, first.clone()).await;
    let created_ok = report.push(
        CasProbeStepKind::Create,
        created.as_ref().map(|_| ()).map_err(|e| one_line(e)),
    );

    if created_ok {
        // 2. A second create must fail and leave the first content.
        let outcome = match cas.create(&probe, content("second-create")).await {
            Ok(_) => Err("a second create-if-absent succeeded: the backend ignores \
                          If-None-Match"
                .to_string()),
            Err(Error::AlreadyExists { .. }) => expect_content(cas, &probe, &first).await,
            Err(e) => Err(format!("expected already-exists, got: {}", one_line(&e))),
        };
        report.push(CasProbeStepKind::SecondCreateRejected, outcome);

        // 3. Update with the current version.
        let mut stale: Option<Version> = None;
        let outcome = match cas.read(&probe).await {
            Ok(Some((_, current))) => {
                let next = content("update");
                match cas.update(&probe, next.clone(), &current).await {
                    Ok(new_version) if new_version == current => {
                        Err("the version did not change after an update".to_string())
                    }
                    Ok(_) => {
                        stale = Some(current);
                        expect_content(cas, &probe, &next).await
                    }
                    Err(e) => Err(one_line(&e)),
                }
            }
            Ok(None) => Err("the created object cannot be read back".to_string()),
            Err(e) => Err(one_line(&e)),
        };
        let updated_ok = report.push(CasProbeStepKind::UpdateWithCurrentVersion, outcome);

        // 4. A stale update must fail and leave the content.
        if let (true, Some(stale)) = (updated_ok, stale) {
            let outcome = match cas.update(&probe, content("stale"), &stale).await {
                Ok(_) => Err(
                    "an update with a stale version succeeded: the backend ignores If-Match"
                        .to_string(),
                ),
                Err(Error::VersionMismatch { .. }) => {
                    expect_content(cas, &probe, &content("update")).await
                }
                Err(e) => Err(format!("expected version mismatch, got: {}", one_line(&e))),
            };
            report.push(CasProbeStepKind::StaleUpdateRejected, outcome);
        } else {
            report.push(
                CasProbeStepKind::StaleUpdateRejected,
                Err("not run: the update step failed".into()),
            );
        }
    }

    // 5. Updating a missing object must fail and create nothing.
    let any_version = Version::new("\"00000000000000000000000000000000\"", None);
    let outcome = match cas.update(&missing, content("missing"), &any_version).await {
        Ok(_) => Err("an update of a missing object succeeded".to_string()),
        Err(Error::VersionMismatch { .. }) => match cas.read(&missing).await {
            Ok(None) => Ok(()),
            Ok(Some(_)) => Err("a rejected update created the object".to_string()),
            Err(e) => Err(one_line(&e)),
        },
        Err(e) => Err(format!("expected version mismatch, got: {}", one_line(&e))),
    };
    report.push(CasProbeStepKind::UpdateOfMissingRejected, outcome);

    // 6. Cleanup.
    let mut cleanup = Ok(());
    for path in [&probe, &missing] {
        if let Err(e) = cas.delete(path).await {
            cleanup = Err(one_line(&e));
        }
    }
    report.push(CasProbeStepKind::Cleanup, cleanup);
    Ok(report)
}

async fn expect_content(
    cas: &dyn CompareAndSwap,
    path: &Path,
    expected: &Bytes,
) -> Result<(), String> {
    match cas.read(path).await {
        Ok(Some((content, _))) if content == *expected => Ok(()),
        Ok(Some(_)) => Err("the object holds other content than the last successful write".into()),
        Ok(None) => Err("the object disappeared".into()),
        Err(e) => Err(one_line(&e)),
    }
}

/// An error as one line (object_store errors can span several).
pub(crate) fn one_line(error: &dyn std::error::Error) -> String {
    let text = error.to_string();
    let mut line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.len() > 300 {
        let mut end = 300;
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        line.truncate(end);
        line.push_str("...");
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cas::{ConditionalPutCas, LocalCas};
    use std::sync::Arc;

    #[tokio::test]
    async fn honest_backends_pass() {
        let dir = tempfile::tempdir().unwrap();
        let local = LocalCas::new(dir.path()).unwrap();
        let report = probe_cas(&local, &Path::from("tmp/p")).await.unwrap();
        assert!(report.passed(), "{report:?}");
        assert_eq!(report.steps.len(), 6);
        assert!(
            std::fs::read_dir(dir.path().join("tmp/p"))
                .unwrap()
                .next()
                .is_none()
        );

        let mem = ConditionalPutCas::new(Arc::new(object_store::memory::InMemory::new()));
        let report = probe_cas(&mem, &Path::from("tmp/p")).await.unwrap();
        assert!(report.passed(), "{report:?}");
    }

    /// A backend that accepts conditional writes and ignores the
    /// conditions, like Garage 2.5.0.
    #[derive(Debug)]
    struct IgnoresConditions(object_store::memory::InMemory);

    #[async_trait::async_trait]
    impl CompareAndSwap for IgnoresConditions {
        async fn read(&self, path: &Path) -> Result<Option<(Bytes, Version)>> {
            ConditionalPutCas::new(Arc::new(self.0.clone()))
                .read(path)
                .await
        }
        async fn create(&self, path: &Path, content: Bytes) -> Result<Version> {
            self.write(path, content).await
        }
        async fn update(&self, path: &Path, content: Bytes, _: &Version) -> Result<Version> {
            self.write(path, content).await
        }
        async fn delete(&self, path: &Path) -> Result<()> {
            ConditionalPutCas::new(Arc::new(self.0.clone()))
                .delete(path)
                .await
        }
    }

    impl IgnoresConditions {
        async fn write(&self, path: &Path, content: Bytes) -> Result<Version> {
            use object_store::ObjectStoreExt;
            let put = self.0.put(path, content.into()).await.unwrap();
            Ok(Version::new(put.e_tag.unwrap(), None))
        }
    }

    #[tokio::test]
    async fn a_backend_ignoring_conditions_fails_the_probe() {
        let cas = IgnoresConditions(object_store::memory::InMemory::new());
        let report = probe_cas(&cas, &Path::from("tmp/p")).await.unwrap();
        assert!(!report.passed());
        let failed: Vec<_> = report
            .steps
            .iter()
            .filter(|s| !s.ok)
            .map(|s| s.kind)
            .collect();
        assert_eq!(
            failed,
            [
                CasProbeStepKind::SecondCreateRejected,
                CasProbeStepKind::StaleUpdateRejected,
                CasProbeStepKind::UpdateOfMissingRejected
            ]
        );
        assert!(
            report.summary().contains("If-None-Match"),
            "{}",
            report.summary()
        );
    }
}
