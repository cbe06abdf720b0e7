//! Reconciliation of database rows against an artifact store: which
//! artifacts the database names are missing or have other bytes, and which
//! objects no row names.
//!
//! This crate does not talk SQL: the caller runs the configured query
//! (`[reconcile] query`, through `warmspare-snapshot` or
//! `warmspare-failover`) and passes the rows as [`ExpectedArtifact`]s. The
//! query returns the key and, optionally, a hex checksum per artifact. For
//! a Habitat Builder database, whose `origin_packages` table holds each
//! package's ident, target and BLAKE2b checksum, and whose object keys are
//! `<ident>/<arch>/<platform>/<ident with '-'>-<target>.hart`, this query
//! with [`DigestAlgorithm::Blake2b256`] (see `docs/habitat-builder.md` for
//! the assumptions and how to check them):
//!
//! ```sql
//! SELECT ident || '/' || regexp_replace(target, '-', '/') || '/'
//!        || replace(ident, '/', '-') || '-' || target || '.hart' AS key,
//!        checksum
//!   FROM origin_packages
//! ```
//!
//! Rows are sorted here (byte order), so the query needs no `ORDER BY`.
//! SHA-256 checksums are compared with the store's sync state when it
//! knows the object (no read); anything else is read and hashed.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use blake2::Digest as _;
use futures::StreamExt;
use futures::stream;
use object_store::ObjectStore;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, Side};
use crate::listing::sorted_listing;
use crate::merge::{self, Keyed, Pair};
use crate::options::SyncOptions;
use crate::state::{self, StateEntry};
use crate::sync::{Ctx, SyncEvent, retrying};
use crate::transfer::{Task, open_body};

/// Keys kept per list in a report (all are counted).
pub const MAX_REPORTED_KEYS: usize = 1000;

/// The digest the database records for each artifact.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum DigestAlgorithm {
    /// SHA-256, lowercase hex (what warmspare records).
    #[default]
    Sha256,
    /// BLAKE2b with a 32-byte output, hex (libsodium's `crypto_generichash`,
    /// Habitat's package checksum).
    Blake2b256,
}

/// One artifact the database says must exist.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpectedArtifact {
    /// Its key in the store.
    pub key: String,
    /// Its checksum (hex), if the database records one.
    pub checksum: Option<String>,
}

impl Keyed for ExpectedArtifact {
    fn key(&self) -> &str {
        &self.key
    }
}

/// An artifact whose bytes do not have the database's checksum.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mismatch {
    /// Its key.
    pub key: String,
    /// The database's checksum.
    pub expected: String,
    /// The checksum of the stored bytes.
    pub actual: String,
}

/// What [`reconcile`] found.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct ReconcileReport {
    /// Rows given (distinct keys).
    pub expected: u64,
    /// Objects in the store.
    pub listed: u64,
    /// Checksums compared.
    pub verified: u64,
    /// Keys named by rows but missing from the store (the first 1000).
    pub missing: Vec<String>,
    /// How many keys are missing.
    pub missing_count: u64,
    /// Artifacts with other bytes than the database says (the first 1000).
    pub mismatched: Vec<Mismatch>,
    /// How many artifacts mismatch.
    pub mismatched_count: u64,
    /// Objects no row names (the first 1000).
    pub unnamed: Vec<String>,
    /// How many objects no row names.
    pub unnamed_count: u64,
    /// Objects that could not be read (each names its object).
    pub errors: Vec<Error>,
}

impl ReconcileReport {
    /// Whether database and store agree (objects no row names aside).
    pub fn is_consistent(&self) -> bool {
        self.missing_count == 0 && self.mismatched_count == 0 && self.errors.is_empty()
    }
}

enum Found {
    Missing(String),
    Unnamed(String),
    Present,
    Checked(Option<Mismatch>),
    Failed(Error),
}

/// Compares `expected` rows with the objects of `store` (keys under
/// `.warmspare/` aside). With `verify_digests`, every row's checksum is
/// compared with the object's bytes. Uses `concurrency`, `bwlimit`,
/// `retries` and `list_order` of `options`.
pub async fn reconcile(
    store: &Arc<dyn ObjectStore>,
    mut expected: Vec<ExpectedArtifact>,
    algorithm: DigestAlgorithm,
    verify_digests: bool,
    options: &SyncOptions,
) -> Result<ReconcileReport> {
    options.validate()?;
    // Rows with a checksum first, so that deduplication keeps them.
    expected.sort_unstable_by(|a, b| {
        a.key
            .cmp(&b.key)
            .then(a.checksum.is_none().cmp(&b.checksum.is_none()))
    });
    expected.dedup_by(|a, b| a.key == b.key);
    let mut report = ReconcileReport {
        expected: expected.len() as u64,
        ..ReconcileReport::default()
    };
    let records = match algorithm {
        DigestAlgorithm::Sha256 if verify_digests => match state::open(store).await {
            Ok(Some(reader)) => reader.entries,
            _ => stream::empty().boxed(),
        },
        _ => stream::empty().boxed(),
    };
    let ctx = Ctx::new(
        store,
        store,
        options,
        Arc::new(|_: &SyncEvent<'_>| {}),
        false,
    );
    let items = merge::attach(
        merge::merge_sorted(
            stream::iter(expected.into_iter().map(Ok)).boxed(),
            sorted_listing(Arc::clone(store), Side::Target, options.list_order),
        ),
        records,
        Box::new(|e| tracing::warn!(error = %e, "ignoring the rest of the sync state")),
    );
    let window = options.concurrency.saturating_mul(16).max(64);
    let mut found = items
        .map(|item| {
            let ctx = Arc::clone(&ctx);
            async move {
                let (pair, record) = item?;
                Ok::<Found, Error>(match pair {
                    Pair::Left(row) => Found::Missing(row.key),
                    Pair::Right(object) => Found::Unnamed(object.location.to_string()),
                    Pair::Both(row, object) => match row.checksum {
                        Some(checksum) if verify_digests => {
                            let record = record.filter(|r| r.describes_target(&object));
                            let task = Task::spawn(async move {
                                check(&ctx, row.key, checksum, algorithm, record).await
                            });
                            task.await?
                        }
                        _ => Found::Present,
                    },
                })
            }
        })
        .buffered(window);
    while let Some(result) = found.next().await {
        match result? {
            Found::Missing(key) => {
                report.missing_count += 1;
                if report.missing.len() < MAX_REPORTED_KEYS {
                    report.missing.push(key);
                }
            }
            Found::Unnamed(key) => {
                report.listed += 1;
                report.unnamed_count += 1;
                if report.unnamed.len() < MAX_REPORTED_KEYS {
                    report.unnamed.push(key);
                }
            }
            Found::Present => report.listed += 1,
            Found::Checked(mismatch) => {
                report.listed += 1;
                report.verified += 1;
                if let Some(m) = mismatch {
                    report.mismatched_count += 1;
                    if report.mismatched.len() < MAX_REPORTED_KEYS {
                        report.mismatched.push(m);
                    }
                }
            }
            Found::Failed(e) => {
                report.listed += 1;
                if report.errors.len() < crate::sync::MAX_REPORTED_ERRORS {
                    report.errors.push(e);
                }
            }
        }
    }
    Ok(report)
}

async fn check(
    ctx: &Ctx,
    key: String,
    checksum: String,
    algorithm: DigestAlgorithm,
    record: Option<StateEntry>,
) -> Found {
    let expected = checksum.trim().to_ascii_lowercase();
    let actual = match record {
        Some(r) if algorithm == DigestAlgorithm::Sha256 => Ok(r.sha256),
        _ => {
            let Ok(_worker) = ctx.workers.acquire().await else {
                return Found::Failed(Error::Task {
                    reason: "the worker pool was closed".into(),
                });
            };
            retrying(ctx, &key, || digest(ctx, &key, algorithm)).await
        }
    };
    match actual {
        Ok(actual) if actual == expected => Found::Checked(None),
        Ok(actual) => Found::Checked(Some(Mismatch {
            key,
            expected,
            actual,
        })),
        Err(e) => Found::Failed(e),
    }
}

/// Reads an object and returns its digest (lowercase hex).
async fn digest(ctx: &Ctx, key: &str, algorithm: DigestAlgorithm) -> Result<String> {
    let path = object_store::path::Path::from(key);
    if algorithm == DigestAlgorithm::Sha256 {
        return ctx
            .mover
            .hash(&ctx.target, &path, Side::Target)
            .await
            .map(|h| h.sha256);
    }
    let mut body = open_body(&ctx.target, &path, Side::Target).await?;
    let mut hasher = blake2::Blake2b::<blake2::digest::consts::U32>::new();
    let mut read = 0u64;
    while let Some(chunk) = body.chunks.next().await {
        let chunk = chunk?;
        if let Some(limiter) = &ctx.mover.limiter {
            limiter.acquire(chunk.len() as u64).await;
        }
        read += chunk.len() as u64;
        hasher.update(&chunk);
    }
    ctx.bytes_read.fetch_add(read, Ordering::Relaxed);
    if read != body.meta.size {
        return Err(Error::SizeMismatch {
            side: Side::Target,
            key: key.to_string(),
            expected: body.meta.size,
            read,
        });
    }
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::ObjectStoreExt;
    use object_store::memory::InMemory;
    use object_store::path::Path;

    fn row(key: &str, checksum: Option<String>) -> ExpectedArtifact {
        ExpectedArtifact {
            key: key.into(),
            checksum,
        }
    }

    #[tokio::test]
    async fn finds_missing_mismatched_and_unnamed() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        for (k, v) in [("a.hart", "aaa"), ("b.hart", "bbb"), ("stray", "x")] {
            store.put(&Path::from(k), v.into()).await.unwrap();
        }
        let blake =
            |v: &[u8]| hex::encode(blake2::Blake2b::<blake2::digest::consts::U32>::digest(v));
        let rows = vec![
            row("b.hart", Some(blake(b"not b").to_uppercase())),
            row("a.hart", Some(blake(b"aaa").to_uppercase())),
            row("gone.hart", None),
            row("a.hart", None),
        ];
        let options = SyncOptions::default();
        let report = reconcile(
            &store,
            rows.clone(),
            DigestAlgorithm::Blake2b256,
            true,
            &options,
        )
        .await
        .unwrap();
        assert_eq!(report.expected, 3);
        assert_eq!(report.listed, 3);
        assert_eq!(report.missing, vec!["gone.hart".to_string()]);
        assert_eq!(report.unnamed, vec!["stray".to_string()]);
        assert_eq!(report.verified, 2);
        assert_eq!(report.mismatched.len(), 1);
        assert_eq!(report.mismatched[0].key, "b.hart");
        assert_eq!(report.mismatched[0].actual, blake(b"bbb"));
        assert!(!report.is_consistent());

        // Without digests only presence counts.
        let report = reconcile(&store, rows, DigestAlgorithm::Blake2b256, false, &options)
            .await
            .unwrap();
        assert_eq!(
            (
                report.verified,
                report.mismatched_count,
                report.missing_count
            ),
            (0, 0, 1)
        );
    }
}
