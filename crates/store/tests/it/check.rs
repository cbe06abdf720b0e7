//! `check_repository` against real backends.

use warmspare_store::{CheckStatus, check_repository, check_rows};

use crate::backend::Backend;

crate::conformance!(check_reports_every_row);

async fn check_reports_every_row(b: &Backend) {
    let rows = check_repository(&b.store).await;
    let names: Vec<_> = rows.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        [
            check_rows::LIST,
            check_rows::WRITE,
            check_rows::READ,
            check_rows::DELETE,
            check_rows::CAS
        ]
    );
    for row in &rows[..4] {
        assert_eq!(row.status, CheckStatus::Ok, "{row:?}");
    }
    let cas = &rows[4];
    if b.cas_enforced {
        assert_eq!(cas.status, CheckStatus::Ok, "{cas:?}");
    } else {
        assert_eq!(cas.status, CheckStatus::Failed, "{cas:?}");
        assert!(cas.detail.contains("must not rely"), "{cas:?}");
    }
    // Nothing is left behind under the scratch prefix.
    use futures::TryStreamExt;
    let left: Vec<_> = b
        .store
        .object_store()
        .list(Some(&warmspare_store::layout::scratch()))
        .try_collect()
        .await
        .unwrap();
    assert!(left.is_empty(), "{left:?}");
}
