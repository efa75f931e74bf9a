//! When an attempt may be repeated (D3), and how long to wait first. Pure: no I/O, no clocks
//! except the `now` callers pass for `Retry-After` dates.
//!
//! Safety rules (RFC 9110 §9.2.2 defines the idempotent methods):
//! - a connection that could not be established sent nothing: always retryable;
//! - once bytes were sent, only idempotent methods (or a route that opts in) are retried, on a
//!   timeout, a reset, or a listed status;
//! - a body larger than the replay buffer is never retried;
//! - nothing is retried once the response started reaching the client (callers only ask before).

use std::time::{Duration, SystemTime};

use http::{HeaderMap, Method};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RetryPolicyError {
    #[error("max_attempts must be between 1 and {MAX_ATTEMPTS}, got {0}")]
    Attempts(u32),
    #[error("retry_on_status {0} is not an HTTP status code")]
    Status(u16),
    #[error("backoff_initial_ms ({0}) must not exceed backoff_max_ms ({1})")]
    Backoff(u64, u64),
    #[error("backoff_initial_ms must be greater than 0 when retries are enabled")]
    ZeroBackoff,
}

/// Highest accepted `max_attempts`.
pub(crate) const MAX_ATTEMPTS: u32 = 10;

/// A route's retry policy; its invariants hold from [`RetryPolicy::try_new`] on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    max_attempts: u32,
    retry_on_status: Vec<u16>,
    retry_non_idempotent: bool,
    backoff_initial: Duration,
    backoff_max: Duration,
}

/// What went wrong with one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No connection: nothing reached the upstream.
    NotSent,
    /// Timeout or reset after the request (or part of it) was sent.
    AfterSend,
    /// The upstream answered with this status.
    Status(u16),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Retry,
    /// Not retried; with the reason when retries are configured (stored in `error_detail`).
    Stop(Option<String>),
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 1,
            retry_on_status: vec![502, 503, 504],
            retry_non_idempotent: false,
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_millis(2000),
        }
    }
}

impl RetryPolicy {
    pub fn try_new(
        max_attempts: u32,
        retry_on_status: Vec<u16>,
        retry_non_idempotent: bool,
        backoff_initial_ms: u64,
        backoff_max_ms: u64,
    ) -> Result<Self, RetryPolicyError> {
        if !(1..=MAX_ATTEMPTS).contains(&max_attempts) {
            return Err(RetryPolicyError::Attempts(max_attempts));
        }
        if let Some(&s) = retry_on_status.iter().find(|s| !(100..=599).contains(*s)) {
            return Err(RetryPolicyError::Status(s));
        }
        if backoff_initial_ms > backoff_max_ms {
            return Err(RetryPolicyError::Backoff(
                backoff_initial_ms,
                backoff_max_ms,
            ));
        }
        if max_attempts > 1 && backoff_initial_ms == 0 {
            return Err(RetryPolicyError::ZeroBackoff);
        }
        Ok(RetryPolicy {
            max_attempts,
            retry_on_status,
            retry_non_idempotent,
            backoff_initial: Duration::from_millis(backoff_initial_ms),
            backoff_max: Duration::from_millis(backoff_max_ms),
        })
    }

    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// Whether attempt `n` (1-based) may be followed by another.
    pub fn decide(&self, n: u32, method: &Method, replayable: bool, failure: Failure) -> Decision {
        if self.max_attempts <= 1 {
            return Decision::Stop(None);
        }
        let why = if let Failure::Status(s) = failure {
            (!self.retry_on_status.contains(&s))
                .then(|| format!("not retried: status {s} is not in retry_on_status"))
        } else {
            None
        };
        let why = why
            .or_else(|| {
                (!replayable)
                    .then(|| "not retried: request body larger than the replay buffer".to_owned())
            })
            .or_else(|| {
                (failure != Failure::NotSent
                    && !is_idempotent(method)
                    && !self.retry_non_idempotent)
                    .then(|| format!("not retried: {method} already sent"))
            })
            .or_else(|| {
                (n >= self.max_attempts)
                    .then(|| format!("not retried: all {} attempts used", self.max_attempts))
            });
        match why {
            Some(reason) => Decision::Stop(Some(reason)),
            None => Decision::Retry,
        }
    }

    /// The wait before attempt `n + 1`: exponential from `backoff_initial`, capped at
    /// `backoff_max`, with "equal jitter" (uniform in the upper half); a `Retry-After` is honoured
    /// up to `backoff_max`.
    pub fn backoff(&self, n: u32, retry_after: Option<Duration>) -> Duration {
        let exp = self
            .backoff_initial
            .saturating_mul(1u32 << n.saturating_sub(1).min(16))
            .min(self.backoff_max);
        let half = exp / 2;
        let jittered = half + half.mul_f64(fastrand::f64());
        match retry_after {
            Some(ra) => jittered.max(ra.min(self.backoff_max)),
            None => jittered,
        }
    }
}

/// RFC 9110 §9.2.2.
pub(crate) fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// `Retry-After` (RFC 9110 §10.2.3): delay-seconds or an HTTP-date, as a wait from `now`.
pub(crate) fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let v = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(max: u32) -> RetryPolicy {
        RetryPolicy::try_new(max, vec![502, 503, 504], false, 100, 2000).expect("valid")
    }

    #[test]
    fn invariants_are_checked_once() {
        assert_eq!(
            RetryPolicy::try_new(0, vec![], false, 1, 2),
            Err(RetryPolicyError::Attempts(0))
        );
        assert_eq!(
            RetryPolicy::try_new(3, vec![999], false, 1, 2),
            Err(RetryPolicyError::Status(999))
        );
        assert_eq!(
            RetryPolicy::try_new(3, vec![503], false, 5, 2),
            Err(RetryPolicyError::Backoff(5, 2))
        );
        assert_eq!(
            RetryPolicy::try_new(3, vec![503], false, 0, 2),
            Err(RetryPolicyError::ZeroBackoff)
        );
    }

    #[test]
    fn safety_rules() {
        let p = policy(3);
        assert_eq!(
            p.decide(1, &Method::GET, true, Failure::Status(503)),
            Decision::Retry
        );
        assert_eq!(
            p.decide(1, &Method::POST, true, Failure::NotSent),
            Decision::Retry
        );
        assert_eq!(
            p.decide(1, &Method::POST, true, Failure::Status(503)),
            Decision::Stop(Some("not retried: POST already sent".into()))
        );
        assert_eq!(
            p.decide(1, &Method::GET, false, Failure::NotSent),
            Decision::Stop(Some(
                "not retried: request body larger than the replay buffer".into()
            ))
        );
        assert_eq!(
            p.decide(3, &Method::GET, true, Failure::AfterSend),
            Decision::Stop(Some("not retried: all 3 attempts used".into()))
        );
        assert_eq!(
            p.decide(1, &Method::GET, true, Failure::Status(500)),
            Decision::Stop(Some(
                "not retried: status 500 is not in retry_on_status".into()
            ))
        );
        assert_eq!(
            policy(1).decide(1, &Method::GET, true, Failure::NotSent),
            Decision::Stop(None)
        );
        let opt_in = RetryPolicy::try_new(3, vec![503], true, 1, 2).expect("valid");
        assert_eq!(
            opt_in.decide(1, &Method::POST, true, Failure::Status(503)),
            Decision::Retry
        );
    }

    #[test]
    fn backoff_grows_is_capped_and_honours_retry_after_up_to_the_cap() {
        let p = policy(5);
        for _ in 0..100 {
            let d1 = p.backoff(1, None);
            assert!(
                d1 >= Duration::from_millis(50) && d1 <= Duration::from_millis(100),
                "{d1:?}"
            );
            let d3 = p.backoff(3, None);
            assert!(
                d3 >= Duration::from_millis(200) && d3 <= Duration::from_millis(400),
                "{d3:?}"
            );
            assert!(p.backoff(30, None) <= Duration::from_millis(2000));
        }
        assert_eq!(
            p.backoff(1, Some(Duration::from_secs(1))),
            Duration::from_secs(1)
        );
        assert_eq!(
            p.backoff(1, Some(Duration::from_secs(60))),
            Duration::from_millis(2000)
        );
    }

    #[test]
    fn retry_after_seconds_or_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        let mut h = HeaderMap::new();
        h.insert(http::header::RETRY_AFTER, "2".parse().expect("header"));
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(2)));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(5));
        h.insert(http::header::RETRY_AFTER, later.parse().expect("header"));
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(5)));
        h.insert(http::header::RETRY_AFTER, "soon".parse().expect("header"));
        assert_eq!(retry_after(&h, now), None);
    }
}
