//! Deletion guards, shared by the mirror and the restore.

/// Why planned deletions were not carried out.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum DeleteRefusal {
    /// Some copies failed: deletions wait until a run copies everything.
    /// `force` does not override this.
    #[error("deletions skipped: {failed} object(s) failed")]
    CopiesFailed {
        /// Objects that failed.
        failed: u64,
    },
    /// The source listed nothing while the target holds objects: a wiped
    /// or misconfigured source looks exactly like this.
    #[error(
        "deletions refused: the source listed no objects but the target holds {target}; \
         use force to mirror an empty source"
    )]
    EmptySource {
        /// Objects on the target.
        target: u64,
    },
    /// More deletions than `max_delete`.
    #[error(
        "deletions refused: {planned} planned, more than max_delete = {limit}; use force or raise the limit"
    )]
    TooMany {
        /// Deletions planned.
        planned: u64,
        /// The limit.
        limit: u64,
    },
    /// A larger share of the target than `max_delete_fraction`.
    #[error(
        "deletions refused: {planned} of the target's {target} objects planned, more than \
         max_delete_fraction = {fraction}; use force or raise the limit"
    )]
    TooLargeShare {
        /// Deletions planned.
        planned: u64,
        /// Objects on the target.
        target: u64,
        /// The limit.
        fraction: f64,
    },
}

/// The limits a run applies to deletions.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) max_delete: u64,
    pub(crate) max_fraction: f64,
    pub(crate) force: bool,
}

/// Decides whether `planned` deletions may go ahead. `source` and `target`
/// count the objects listed on each side, `failed` the objects that failed.
pub(crate) fn check(
    planned: u64,
    source: u64,
    target: u64,
    failed: u64,
    limits: Limits,
) -> Option<DeleteRefusal> {
    if planned == 0 {
        return None;
    }
    if failed > 0 {
        return Some(DeleteRefusal::CopiesFailed { failed });
    }
    if limits.force {
        return None;
    }
    if source == 0 && target > 0 {
        return Some(DeleteRefusal::EmptySource { target });
    }
    if planned > limits.max_delete {
        return Some(DeleteRefusal::TooMany {
            planned,
            limit: limits.max_delete,
        });
    }
    if planned as f64 > limits.max_fraction * target as f64 {
        return Some(DeleteRefusal::TooLargeShare {
            planned,
            target,
            fraction: limits.max_fraction,
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: Limits = Limits {
        max_delete: 10,
        max_fraction: 0.5,
        force: false,
    };

    #[test]
    fn guards() {
        assert_eq!(check(0, 0, 100, 3, L), None);
        assert_eq!(
            check(1, 5, 10, 1, L),
            Some(DeleteRefusal::CopiesFailed { failed: 1 })
        );
        assert_eq!(
            check(1, 5, 10, 1, Limits { force: true, ..L }),
            Some(DeleteRefusal::CopiesFailed { failed: 1 })
        );
        assert_eq!(
            check(3, 0, 3, 0, L),
            Some(DeleteRefusal::EmptySource { target: 3 })
        );
        assert_eq!(check(3, 0, 3, 0, Limits { force: true, ..L }), None);
        assert!(matches!(
            check(11, 100, 200, 0, L),
            Some(DeleteRefusal::TooMany { .. })
        ));
        assert!(matches!(
            check(6, 4, 10, 0, L),
            Some(DeleteRefusal::TooLargeShare { .. })
        ));
        assert_eq!(check(5, 5, 10, 0, L), None);
        assert_eq!(check(11, 1, 12, 0, Limits { force: true, ..L }), None);
    }
}
