use std::net::TcpStream;
use std::time::Instant;

use object_store::path::Path;
use object_store::{ObjectStoreExt, PutMode, PutOptions, UpdateVersion};
use warmspare_testkit::{S3Kind, S3Server};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_server_put_get_and_stop_on_drop() {
    let started = Instant::now();
    let Some(s3) = S3Server::try_start().await.expect("s3 server") else {
        return;
    };
    eprintln!("{:?} started in {:?}", s3.kind(), started.elapsed());
    assert!(s3.endpoint().starts_with("http://127.0.0.1:"));
    assert_eq!(s3.region(), "us-east-1");
    s3.create_bucket("testkit-private").await.expect("bucket");
    let store = s3.store_for_bucket("testkit-private").expect("store");
    let path = Path::from("dir/object");
    store.put(&path, "payload".into()).await.expect("put");
    let body = store
        .get(&path)
        .await
        .expect("get")
        .bytes()
        .await
        .expect("body");
    assert_eq!(body.as_ref(), b"payload");

    let addr = s3.endpoint().trim_start_matches("http://").to_owned();
    drop(s3);
    assert!(TcpStream::connect(&addr).is_err(), "server stopped on drop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_writes_are_enforced_by_moto() {
    let Some(s3) = S3Server::try_shared().await.expect("s3 server") else {
        return;
    };
    let bucket = s3.unique_bucket("conditional").await.expect("bucket");
    let store = s3.store_for_bucket(&bucket).expect("store");
    let path = Path::from("lease/active.json");
    let create = PutOptions::from(PutMode::Create);

    let first = store
        .put_opts(&path, "epoch 1".into(), create.clone())
        .await
        .expect("create when absent");
    let second = store.put_opts(&path, "epoch 1'".into(), create).await;

    let update = |version: UpdateVersion| PutOptions::from(PutMode::Update(version));
    let renewed = store
        .put_opts(
            &path,
            "epoch 1 renewed".into(),
            update(first.clone().into()),
        )
        .await;
    let stale = store
        .put_opts(&path, "epoch 2".into(), update(first.into()))
        .await;

    if s3.conditional_writes_enforced() {
        assert_eq!(s3.kind(), S3Kind::Moto);
        assert!(
            matches!(second, Err(object_store::Error::AlreadyExists { .. })),
            "second create-if-absent must fail: {second:?}"
        );
        renewed.expect("update with the current etag");
        assert!(
            matches!(stale, Err(object_store::Error::Precondition { .. })),
            "update with a stale etag must fail: {stale:?}"
        );
        let body = store
            .get(&path)
            .await
            .expect("get")
            .bytes()
            .await
            .expect("body");
        assert_eq!(body.as_ref(), b"epoch 1 renewed");
    } else {
        // Garage 2.5.0 ignores the headers: both succeed.
        assert_eq!(s3.kind(), S3Kind::Garage);
        assert!(second.is_ok() && stale.is_ok());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_server_is_shared_and_buckets_are_unique() {
    let Some(a) = S3Server::try_shared().await.expect("s3 server") else {
        return;
    };
    let b = S3Server::shared().await.expect("shared");
    assert!(std::ptr::eq(a, b));
    let x = a.unique_bucket("same-prefix").await.expect("bucket x");
    let y = a.unique_bucket("same-prefix").await.expect("bucket y");
    assert_ne!(x, y);
    let (sx, sy) = (
        a.store_for_bucket(&x).expect("x"),
        a.store_for_bucket(&y).expect("y"),
    );
    sx.put(&Path::from("k"), "in x".into()).await.expect("put");
    assert!(matches!(
        sy.head(&Path::from("k")).await,
        Err(object_store::Error::NotFound { .. })
    ));
}
