//! The conformance suite of `warmspare-store`: every test runs against
//! every backend (a filesystem tempdir, and a real S3 server from the
//! testkit, moto by default or Garage with `WARMSPARE_TEST_S3=garage`).
//! S3 tests are skipped with a note when no S3 server is installed, unless
//! `WARMSPARE_REQUIRE_S3` is set.

#![allow(clippy::unwrap_used)]

mod auth;
mod backend;
mod cas;
mod check;
mod codec;
mod data;
mod repo;

/// Instantiates `async fn name(backend: &Backend)` test bodies once per
/// backend: `filesystem::name` and `s3::name`.
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod filesystem {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let backend = crate::backend::filesystem();
                    super::$name(&backend).await;
                }
            )*
        }
        mod s3 {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let Some(backend) = crate::backend::s3(stringify!($name)).await else {
                        return;
                    };
                    super::$name(&backend).await;
                }
            )*
        }
    };
}
pub(crate) use conformance;
