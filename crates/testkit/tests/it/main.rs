//! Integration tests of the testkit against real PostgreSQL and S3 servers.

mod postgres;
mod s3;
