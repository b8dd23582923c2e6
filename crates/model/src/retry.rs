//! Retrying model calls: exponential backoff with jitter, `Retry-After` honoured, and prompt
//! cancellation both during a call and while waiting between attempts.

use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::{Error, ModelProvider, ModelRequest, ModelResponse};

/// How often and how patiently to retry a failed call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt (so at most `max_retries + 1` attempts).
    pub max_retries: u32,
    /// The delay before the first retry; it doubles per retry.
    pub base_delay: Duration,
    /// No wait is ever longer, `Retry-After` included.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self { max_retries: 3, base_delay: Duration::from_millis(500), max_delay: Duration::from_secs(30) }
    }
}

/// Calls `p`, retrying retryable errors. `on_retry(n, err)` is called before the n-th retry
/// (1-based) with the error that caused it. Cancelling `cancel` ends the call or the wait at once
/// with an `ErrorKind::Cancelled` error.
pub async fn complete_with_retry(
    p: &dyn ModelProvider,
    req: &ModelRequest,
    policy: &RetryPolicy,
    cancel: &CancellationToken,
    on_delta: &(dyn Fn(&str) + Send + Sync),
    on_retry: &(dyn Fn(u32, &Error) + Send + Sync),
) -> Result<ModelResponse, Error> {
    let mut retries = 0u32;
    loop {
        if cancel.is_cancelled() {
            return Err(Error::cancelled());
        }
        // Dropping the call future aborts the HTTP request, which is what cancelling should do.
        let result = tokio::select! {
            biased;
            _ = cancel.cancelled() => return Err(Error::cancelled()),
            r = p.complete(req, on_delta) => r,
        };
        let err = match result {
            Ok(resp) => return Ok(resp),
            Err(err) => err,
        };
        if !err.retryable() || retries >= policy.max_retries {
            return Err(err);
        }
        retries += 1;
        tracing::debug!(retry = retries, code = err.code(), error = %err, "retrying model call");
        on_retry(retries, &err);
        let delay = backoff_delay(policy, retries, &err, jitter_fraction());
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return Err(Error::cancelled()),
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// The wait before retry number `retry` (1-based). `jitter` in [0, 1) spreads the exponential
/// delay over its upper half, so many clients failing together do not retry together.
pub(crate) fn backoff_delay(policy: &RetryPolicy, retry: u32, err: &Error, jitter: f64) -> Duration {
    if let Some(after) = err.retry_after {
        return after.min(policy.max_delay);
    }
    let exp = 2u32.saturating_pow(retry.saturating_sub(1));
    let full = policy.base_delay.saturating_mul(exp).min(policy.max_delay);
    full / 2 + full.mul_f64(jitter.clamp(0.0, 1.0) / 2.0)
}

/// A number in [0, 1) that differs per call. Jitter needs spread, not quality, and
/// `RandomState` is seeded randomly per instance, which saves a dependency.
fn jitter_fraction() -> f64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    fn policy() -> RetryPolicy {
        RetryPolicy { max_retries: 5, base_delay: Duration::from_millis(100), max_delay: Duration::from_secs(1) }
    }

    #[test]
    fn backoff_doubles_within_jitter_bounds_and_is_capped() {
        let err = Error::new(ErrorKind::Server, "x");
        for (retry, full) in [(1, 100), (2, 200), (3, 400), (4, 800), (5, 1000), (40, 1000)] {
            let full = Duration::from_millis(full);
            assert_eq!(backoff_delay(&policy(), retry, &err, 0.0), full / 2);
            let hi = backoff_delay(&policy(), retry, &err, 0.999_999);
            assert!(hi <= full && hi > full / 2, "{retry}: {hi:?}");
        }
    }

    #[test]
    fn retry_after_is_honoured_but_capped() {
        let err = Error::new(ErrorKind::RateLimited, "x").with_retry_after(Some(Duration::from_millis(300)));
        assert_eq!(backoff_delay(&policy(), 1, &err, 0.5), Duration::from_millis(300));
        let err = err.with_retry_after(Some(Duration::from_secs(120)));
        assert_eq!(backoff_delay(&policy(), 1, &err, 0.5), Duration::from_secs(1));
    }

    #[test]
    fn jitter_is_in_unit_interval() {
        for _ in 0..100 {
            let j = jitter_fraction();
            assert!((0.0..1.0).contains(&j));
        }
    }
}
