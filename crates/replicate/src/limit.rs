//! Shared limits of a run: the byte-rate limiter and the buffer budget.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::error::{Error, Result};

/// A token bucket shared by every worker of a run: each body byte read
/// from a store takes a token; tokens refill at `rate` bytes per second up
/// to a burst of a quarter of a second's worth (at least 64 KiB).
///
/// Workers that find the bucket short take the tokens anyway (the bucket
/// goes into debt) and sleep until the debt is paid, so the long-run rate
/// across all workers is exactly `rate` however many of them there are,
/// and no worker starves: debts are served in the order they were taken.
///
/// Time comes from `tokio::time`, so tests drive it with a paused clock.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    bucket: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl RateLimiter {
    /// A limiter of `bytes_per_second` (at least 1), starting full.
    pub fn new(bytes_per_second: u64) -> Self {
        let rate = bytes_per_second.max(1) as f64;
        let burst = (rate / 4.0).max(64.0 * 1024.0);
        Self {
            rate,
            burst,
            bucket: Mutex::new(Bucket {
                tokens: burst,
                updated: Instant::now(),
            }),
        }
    }

    /// The configured rate in bytes per second.
    pub fn rate(&self) -> u64 {
        self.rate as u64
    }

    /// Takes `bytes` tokens, sleeping as long as the rate requires.
    pub async fn acquire(&self, bytes: u64) {
        let wait = {
            let mut bucket = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
            bucket.tokens = (bucket.tokens + elapsed * self.rate).min(self.burst);
            bucket.updated = now;
            bucket.tokens -= bytes as f64;
            if bucket.tokens >= 0.0 {
                None
            } else {
                Some(Duration::from_secs_f64(-bucket.tokens / self.rate))
            }
        };
        if let Some(wait) = wait {
            tokio::time::sleep(wait).await;
        }
    }
}

/// Bounds the bytes held in upload buffers by all workers together.
#[derive(Debug, Clone)]
pub(crate) struct Budget {
    semaphore: Arc<Semaphore>,
    total: usize,
}

impl Budget {
    pub(crate) fn new(bytes: usize) -> Self {
        let total = bytes.clamp(1, Semaphore::MAX_PERMITS);
        Self {
            semaphore: Arc::new(Semaphore::new(total)),
            total,
        }
    }

    /// Reserves `bytes` (capped at the whole budget) until the permit drops.
    pub(crate) async fn reserve(&self, bytes: usize) -> Result<OwnedSemaphorePermit> {
        let n = u32::try_from(bytes.clamp(1, self.total)).unwrap_or(u32::MAX);
        Arc::clone(&self.semaphore)
            .acquire_many_owned(n)
            .await
            .map_err(|_| Error::Task {
                reason: "the buffer budget was closed".into(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn limits_the_rate_across_workers() {
        let limiter = Arc::new(RateLimiter::new(1024 * 1024));
        let start = Instant::now();
        // Four workers move 8 MiB together in 64 KiB steps.
        let workers: Vec<_> = (0..4)
            .map(|_| {
                let limiter = Arc::clone(&limiter);
                tokio::spawn(async move {
                    for _ in 0..32 {
                        limiter.acquire(64 * 1024).await;
                    }
                })
            })
            .collect();
        for w in workers {
            w.await.unwrap();
        }
        let elapsed = start.elapsed().as_secs_f64();
        // 8 MiB at 1 MiB/s minus the initial burst of 256 KiB.
        assert!(elapsed >= 7.7, "{elapsed}");
        assert!(elapsed <= 8.1, "{elapsed}");
    }

    #[tokio::test(start_paused = true)]
    async fn small_amounts_within_the_burst_do_not_wait() {
        let limiter = RateLimiter::new(10 * 1024 * 1024);
        let start = Instant::now();
        limiter.acquire(1000).await;
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[tokio::test]
    async fn budget_blocks_until_released() {
        let budget = Budget::new(100);
        let a = budget.reserve(60).await.unwrap();
        let b = budget.reserve(1000).now_or_never_pending();
        assert!(b);
        drop(a);
        let _c = budget.reserve(1000).await.unwrap();
    }

    trait NowOrNever {
        fn now_or_never_pending(self) -> bool;
    }
    impl<F: std::future::Future> NowOrNever for F {
        fn now_or_never_pending(self) -> bool {
            futures::FutureExt::now_or_never(self).is_none()
        }
    }
}
