//! Options of the mirror and the artifact backup and restore.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::listing::ListOrder;

/// Default number of objects transferred at once.
pub const DEFAULT_CONCURRENCY: usize = 16;
/// Default limit on deletions per run (see [`SyncOptions::max_delete`]).
pub const DEFAULT_MAX_DELETE: u64 = 1000;
/// Default limit on the share of the target deleted per run.
pub const DEFAULT_MAX_DELETE_FRACTION: f64 = 0.5;
/// Default number of retries of one object's transfer.
pub const DEFAULT_RETRIES: u32 = 3;
/// Default multipart part size; objects smaller than this are sent with
/// one PUT.
pub const DEFAULT_PART_SIZE: usize = 8 * 1024 * 1024;
/// Default bound on the bytes held in upload buffers by all workers.
pub const DEFAULT_BUFFER_MEMORY: usize = 32 * 1024 * 1024;
/// Default number of objects established between two checkpoints.
pub const DEFAULT_CHECKPOINT_OBJECTS: u64 = 10_000;

/// How much a copy trusts a single read of the source.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SourceVerify {
    /// Size, unchanged version after the read, and the MD5 when the source
    /// announces one (a plain S3 ETag; when two reads agree on a SHA-256
    /// that does not match it, the ETag is taken not to be an MD5, as with
    /// SSE-KMS).
    #[default]
    Standard,
    /// As `Standard`, and the source is read a second time; the upload is
    /// committed only when both reads have the same SHA-256. Catches
    /// corruption in transit on backends without a content digest
    /// (filesystem, multipart ETags) at twice the read cost.
    Reread,
}

/// Options of [`crate::sync()`].
///
/// Also the `[sync]` table of a configuration file: unknown keys are an
/// error, missing keys take the defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyncOptions {
    /// Objects transferred (or hashed) at once.
    pub concurrency: usize,
    /// Byte-rate limit on object bodies read, over all workers together,
    /// in bytes per second ([`parse_byte_rate`] reads `"10MiB"`).
    pub bwlimit: Option<u64>,
    /// Delete objects that exist only on the target.
    pub delete: bool,
    /// At most this many deletions per run (unless `force`). Default
    /// 1000: more than a package registry deletes between two runs, fewer
    /// than a wiped bucket or a partial listing would.
    pub max_delete: u64,
    /// At most this share of the target's objects deleted per run (unless
    /// `force`). Default 0.5: catches a half-empty listing of a small store
    /// that `max_delete` alone would let through.
    pub max_delete_fraction: f64,
    /// Override `max_delete`, `max_delete_fraction` and the empty-source
    /// guard. Never overrides "no deletions after a failed copy or a
    /// failed listing".
    pub force: bool,
    /// Plan only: list, compare, hash where needed, report; write and
    /// delete nothing.
    pub dry_run: bool,
    /// Retries of one object's transfer after a retryable error.
    pub retries: u32,
    /// Multipart part size (at least 5 MiB, the S3 minimum).
    pub part_size: usize,
    /// Bound on bytes held in upload buffers by all workers (at least two
    /// parts).
    pub buffer_memory: usize,
    /// How much a copy trusts one read of the source.
    pub verify: SourceVerify,
    /// Ignore the recorded state: hash every pair of same-size objects on
    /// both sides (a scrub that also finds corruption at rest).
    pub rehash: bool,
    /// How the stores are listed in key order.
    pub list_order: ListOrder,
    /// Identity of the source recorded with the state (for example its
    /// URL, credentials removed). Source version tokens recorded for
    /// another identity are not trusted (costs hashing, never a wrong
    /// skip).
    pub source_id: Option<String>,
    /// A checkpoint is written after this many objects were copied (or
    /// hashed), and at least every 30 seconds while some wait, so that an
    /// interrupted run does not read them again; 0 disables checkpoints.
    pub checkpoint_objects: u64,
}

impl Default for SyncOptions {
    fn default() -> Self {
        Self {
            concurrency: DEFAULT_CONCURRENCY,
            bwlimit: None,
            delete: false,
            max_delete: DEFAULT_MAX_DELETE,
            max_delete_fraction: DEFAULT_MAX_DELETE_FRACTION,
            force: false,
            dry_run: false,
            retries: DEFAULT_RETRIES,
            part_size: DEFAULT_PART_SIZE,
            buffer_memory: DEFAULT_BUFFER_MEMORY,
            verify: SourceVerify::Standard,
            rehash: false,
            list_order: ListOrder::Auto,
            source_id: None,
            checkpoint_objects: DEFAULT_CHECKPOINT_OBJECTS,
        }
    }
}

impl SyncOptions {
    /// Sets the number of concurrent transfers.
    pub fn with_concurrency(mut self, n: usize) -> Self {
        self.concurrency = n;
        self
    }

    /// Sets (or removes) the byte-rate limit in bytes per second.
    pub fn with_bwlimit(mut self, bytes_per_second: Option<u64>) -> Self {
        self.bwlimit = bytes_per_second;
        self
    }

    /// Enables deletions of objects only on the target.
    pub fn with_delete(mut self, delete: bool) -> Self {
        self.delete = delete;
        self
    }

    /// Sets the per-run deletion limit.
    pub fn with_max_delete(mut self, n: u64) -> Self {
        self.max_delete = n;
        self
    }

    /// Sets the share of the target that one run may delete.
    pub fn with_max_delete_fraction(mut self, fraction: f64) -> Self {
        self.max_delete_fraction = fraction;
        self
    }

    /// Overrides the deletion limits.
    pub fn with_force(mut self, force: bool) -> Self {
        self.force = force;
        self
    }

    /// Plans without writing.
    pub fn with_dry_run(mut self, dry_run: bool) -> Self {
        self.dry_run = dry_run;
        self
    }

    /// Sets the retries per object.
    pub fn with_retries(mut self, retries: u32) -> Self {
        self.retries = retries;
        self
    }

    /// Sets the multipart part size.
    pub fn with_part_size(mut self, bytes: usize) -> Self {
        self.part_size = bytes;
        self
    }

    /// Sets the buffer budget.
    pub fn with_buffer_memory(mut self, bytes: usize) -> Self {
        self.buffer_memory = bytes;
        self
    }

    /// Sets the source verification.
    pub fn with_verify(mut self, verify: SourceVerify) -> Self {
        self.verify = verify;
        self
    }

    /// Ignores the recorded state (scrub).
    pub fn with_rehash(mut self, rehash: bool) -> Self {
        self.rehash = rehash;
        self
    }

    /// Sets the listing strategy.
    pub fn with_list_order(mut self, order: ListOrder) -> Self {
        self.list_order = order;
        self
    }

    /// Sets the number of objects between two checkpoints (0: none).
    pub fn with_checkpoint_objects(mut self, n: u64) -> Self {
        self.checkpoint_objects = n;
        self
    }

    /// Sets the source identity recorded with the state.
    pub fn with_source_id(mut self, id: impl Into<String>) -> Self {
        self.source_id = Some(id.into());
        self
    }

    /// Checks the options; errors name the setting.
    pub fn validate(&self) -> Result<()> {
        let invalid = |reason: &str| {
            Err(Error::InvalidOptions {
                reason: reason.to_string(),
            })
        };
        if self.concurrency == 0 {
            return invalid("concurrency must be at least 1");
        }
        if self.bwlimit == Some(0) {
            return invalid("bwlimit must be more than 0 bytes per second");
        }
        if !(0.0..=1.0).contains(&self.max_delete_fraction) {
            return invalid("max_delete_fraction must be between 0 and 1");
        }
        if self.part_size < 5 * 1024 * 1024 {
            return invalid("part_size must be at least 5 MiB (the S3 minimum)");
        }
        if self.buffer_memory < 2 * self.part_size {
            return invalid("buffer_memory must hold at least two parts");
        }
        Ok(())
    }
}

/// Parses a byte rate such as `"500K"`, `"10MiB"`, `"1.5M/s"` or `"2048"`
/// (bytes per second; `K`, `M`, `G` and their `KiB`/`KB` spellings are all
/// powers of 1024, as in rclone's `--bwlimit`).
pub fn parse_byte_rate(text: &str) -> Result<u64> {
    let invalid = || Error::InvalidOptions {
        reason: format!("invalid byte rate {text:?}: expected a number with an optional K, M or G"),
    };
    let t = text.trim();
    let t = t.strip_suffix("/s").unwrap_or(t).trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let number: f64 = number.parse().map_err(|_| invalid())?;
    let multiplier: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" | "kib" => 1024.0,
        "m" | "mb" | "mib" => 1024.0 * 1024.0,
        "g" | "gb" | "gib" => 1024.0 * 1024.0 * 1024.0,
        _ => return Err(invalid()),
    };
    let rate = number * multiplier;
    if !rate.is_finite() || rate < 1.0 {
        return Err(invalid());
    }
    Ok(rate as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_rates() {
        assert_eq!(parse_byte_rate("2048").unwrap(), 2048);
        assert_eq!(parse_byte_rate("500K").unwrap(), 500 * 1024);
        assert_eq!(parse_byte_rate("10MiB").unwrap(), 10 * 1024 * 1024);
        assert_eq!(parse_byte_rate("1.5M/s").unwrap(), 1572864);
        assert_eq!(parse_byte_rate("1g").unwrap(), 1 << 30);
        for bad in ["", "x", "10Q", "0", "-1M"] {
            assert!(parse_byte_rate(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn defaults_validate_and_config_is_strict() {
        SyncOptions::default().validate().unwrap();
        assert!(
            SyncOptions::default()
                .with_concurrency(0)
                .validate()
                .is_err()
        );
        assert!(
            SyncOptions::default()
                .with_part_size(1024)
                .validate()
                .is_err()
        );
        let parsed: SyncOptions = serde_json::from_str(
            r#"{"delete": true, "max_delete": 5, "list_order": "per-directory"}"#,
        )
        .unwrap();
        assert!(parsed.delete);
        assert_eq!(parsed.max_delete, 5);
        assert_eq!(parsed.list_order, ListOrder::PerDirectory);
        assert!(serde_json::from_str::<SyncOptions>(r#"{"delet": true}"#).is_err());
    }
}
