//! [`check_repository`]: what works against a configured store, as rows of
//! a table (`warmspare check`).

use bytes::Bytes;
use object_store::ObjectStoreExt;
use object_store::path::Path;
use serde::Serialize;

use crate::cas::{one_line, probe_cas};
use crate::layout;
use crate::store::Store;

/// The outcome of one check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckStatus {
    /// It works.
    Ok,
    /// It does not; the detail says why.
    Failed,
    /// Not attempted because an earlier check it depends on failed.
    Skipped,
}

/// One row of the check table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CheckOutcome {
    /// What was checked ("list", "write probe object", ...).
    pub name: String,
    /// The outcome.
    pub status: CheckStatus,
    /// One line; empty when ok. Never contains a secret.
    pub detail: String,
}

impl CheckOutcome {
    /// Whether the check passed.
    pub fn is_ok(&self) -> bool {
        self.status == CheckStatus::Ok
    }

    fn new(name: &str, result: Result<(), String>) -> Self {
        match result {
            Ok(()) => Self {
                name: name.to_string(),
                status: CheckStatus::Ok,
                detail: String::new(),
            },
            Err(detail) => Self {
                name: name.to_string(),
                status: CheckStatus::Failed,
                detail,
            },
        }
    }

    fn skipped(name: &str, because: &str) -> Self {
        Self {
            name: name.to_string(),
            status: CheckStatus::Skipped,
            detail: format!("skipped: {because}"),
        }
    }
}

/// Row names, in order.
pub mod rows {
    /// Listing the repository root.
    pub const LIST: &str = "list";
    /// Writing a scratch object.
    pub const WRITE: &str = "write probe object";
    /// Reading it back.
    pub const READ: &str = "read probe object";
    /// Deleting it.
    pub const DELETE: &str = "delete probe object";
    /// [`crate::probe_cas`] under the scratch prefix.
    pub const CAS: &str = "compare-and-swap";
}

/// Reaches the store and reports, row by row, whether listing, writing,
/// reading and deleting a probe object, and compare-and-swap work. Scratch
/// objects live under `tmp/check-<random>/` and are removed afterwards.
/// Never fails as a whole: every problem is a row.
pub async fn check_repository(store: &Store) -> Vec<CheckOutcome> {
    let os = store.object_store();
    let mut out = Vec::new();

    let listed = os.list_with_delimiter(None).await;
    out.push(CheckOutcome::new(
        rows::LIST,
        listed.map(|_| ()).map_err(|e| one_line(&e)),
    ));

    let scratch = layout::scratch().join(format!("check-{:016x}", rand::random::<u64>()));
    let object: Path = scratch.clone().join("object");
    let payload = Bytes::from(format!(
        "warmspare check probe {:016x}\n",
        rand::random::<u64>()
    ));

    let written = os.put(&object, payload.clone().into()).await;
    let wrote = written.is_ok();
    out.push(CheckOutcome::new(
        rows::WRITE,
        written.map(|_| ()).map_err(|e| one_line(&e)),
    ));

    if wrote {
        let read = match os.get(&object).await {
            Ok(result) => match result.bytes().await {
                Ok(bytes) if bytes == payload => Ok(()),
                Ok(_) => Err("read back other bytes than were written".to_string()),
                Err(e) => Err(one_line(&e)),
            },
            Err(e) => Err(one_line(&e)),
        };
        out.push(CheckOutcome::new(rows::READ, read));
        let deleted = match os.delete(&object).await {
            Ok(()) => match os.head(&object).await {
                Err(object_store::Error::NotFound { .. }) => Ok(()),
                Ok(_) => Err("the object is still there after delete".to_string()),
                Err(e) => Err(one_line(&e)),
            },
            Err(e) => Err(one_line(&e)),
        };
        out.push(CheckOutcome::new(rows::DELETE, deleted));
    } else {
        out.push(CheckOutcome::skipped(rows::READ, "write failed"));
        out.push(CheckOutcome::skipped(rows::DELETE, "write failed"));
    }

    if wrote {
        let cas = match probe_cas(store.cas().as_ref(), &scratch.clone().join("cas")).await {
            Ok(report) if report.passed() => Ok(()),
            Ok(report) => Err(format!(
                "{}; automatic failover must not rely on this backend",
                report.summary()
            )),
            Err(e) => Err(one_line(&e)),
        };
        out.push(CheckOutcome::new(rows::CAS, cas));
    } else {
        out.push(CheckOutcome::skipped(rows::CAS, "write failed"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StoreConfig;

    #[tokio::test]
    async fn filesystem_repository_passes_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let url = url::Url::from_directory_path(dir.path()).unwrap();
        let store = Store::open(&StoreConfig::new(url.as_str())).unwrap();
        let rows = check_repository(&store).await;
        let names: Vec<_> = rows.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            [rows::LIST, rows::WRITE, rows::READ, rows::DELETE, rows::CAS]
        );
        assert!(rows.iter().all(CheckOutcome::is_ok), "{rows:?}");
        let mut leftovers = Vec::new();
        for entry in walk(dir.path()) {
            if entry.is_file() {
                leftovers.push(entry);
            }
        }
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                out.extend(walk(&path));
            }
            out.push(path);
        }
        out
    }

    #[tokio::test]
    async fn unreachable_s3_fails_with_one_line_and_no_secret() {
        let config = StoreConfig::new("s3://bucket/p")
            .with_endpoint("http://127.0.0.1:9")
            .with_allow_http(true)
            .with_connect_timeout(std::time::Duration::from_millis(200))
            .with_retries(0, std::time::Duration::from_secs(1))
            .with_credentials("AKIDEXAMPLE", "hunter2-secret");
        let store = Store::open(&config).unwrap();
        let rows = check_repository(&store).await;
        assert_eq!(rows[0].status, CheckStatus::Failed, "{rows:?}");
        assert_eq!(rows[1].status, CheckStatus::Failed);
        assert_eq!(rows[2].status, CheckStatus::Skipped);
        for row in &rows {
            assert!(!row.detail.contains("hunter2"), "{row:?}");
            assert!(!row.detail.contains('\n'), "{row:?}");
        }
    }
}
