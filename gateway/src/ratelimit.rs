//! Rate limits: token buckets per client IP, per account, and for logins per IP
//! (`governor`), read against the injected clock.
//!
//! For: the `limit` layer (IP and login buckets, before any handler work) and
//! [`Limiters::check_account`], which the bearer-token extractor calls once it knows
//! the account. A refused request is 429 `RATE_LIMITED` with `Retry-After` (whole
//! seconds, at least 1). Each limiter tracks at most `tracked_keys_max` clients: past
//! it, entries whose bucket is full again are dropped; if none are, new clients are
//! refused, so a flood of source addresses cannot grow memory without bound.
//! Not for: password-hashing backpressure (`auth::Passwords` answers 503 itself).

use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::Clock as GovernorClock;
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};
use warpcore_persistence::store::AccountId;

use crate::config::{Clock, RateLimits};
use crate::error::ApiError;
use crate::state::AppState;

/// The injected clock as governor wants it: monotonic nanoseconds.
#[derive(Clone)]
struct LimiterClock(Arc<dyn Clock>);

impl GovernorClock for LimiterClock {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        Nanos::from(self.0.monotonic_us().saturating_mul(1000))
    }
}

type Keyed<K> = RateLimiter<K, DashMapStateStore<K>, LimiterClock, NoOpMiddleware<Nanos>>;

/// The three limiters and their bound.
pub(crate) struct Limiters {
    ip: Keyed<IpAddr>,
    account: Keyed<AccountId>,
    login: Keyed<IpAddr>,
    clock: LimiterClock,
    tracked_keys_max: usize,
}

fn quota(per: Quota, burst: u32) -> Quota {
    per.allow_burst(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN))
}

fn per_second(n: u32) -> Quota {
    Quota::per_second(NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN))
}

fn per_minute(n: u32) -> Quota {
    Quota::per_minute(NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN))
}

fn keyed<K: Hash + Eq + Clone>(q: Quota, clock: &LimiterClock) -> Keyed<K> {
    RateLimiter::new(q, DashMapStateStore::default(), clock.clone())
}

impl Limiters {
    pub fn new(limits: &RateLimits, clock: Arc<dyn Clock>) -> Limiters {
        let clock = LimiterClock(clock);
        Limiters {
            ip: keyed(quota(per_second(limits.ip_per_s), limits.ip_burst), &clock),
            account: keyed(
                quota(per_second(limits.account_per_s), limits.account_burst),
                &clock,
            ),
            login: keyed(
                quota(per_minute(limits.login_per_min), limits.login_burst),
                &clock,
            ),
            clock,
            tracked_keys_max: limits.tracked_keys_max.max(1),
        }
    }

    /// # Errors
    /// `RateLimited` when the account's bucket is empty.
    pub fn check_account(&self, account_id: AccountId) -> Result<(), ApiError> {
        self.check(&self.account, account_id)
    }

    fn check<K: Hash + Eq + Clone>(&self, limiter: &Keyed<K>, key: K) -> Result<(), ApiError> {
        if limiter.len() >= self.tracked_keys_max {
            limiter.retain_recent();
            limiter.shrink_to_fit();
            if limiter.len() >= self.tracked_keys_max {
                tracing::warn!(
                    tracked_keys_max = self.tracked_keys_max,
                    "gateway: rate limiter full, refusing"
                );
                return Err(ApiError::RateLimited { retry_after_s: 1 });
            }
        }
        limiter.check_key(&key).map_err(|not_until| {
            let wait = not_until.wait_time_from(self.clock.now());
            let retry_after_s = u32::try_from(wait.as_secs()).unwrap_or(u32::MAX);
            let retry_after_s = if wait.subsec_nanos() > 0 {
                retry_after_s.saturating_add(1)
            } else {
                retry_after_s
            };
            ApiError::RateLimited {
                retry_after_s: retry_after_s.max(1),
            }
        })
    }
}

/// Paths that also spend from the login bucket: the ones that run argon2.
fn is_password_route(path: &str) -> bool {
    matches!(path, "/api/auth/login" | "/api/auth/register")
}

/// The IP and login limits, before routing does any work. Without `ConnectInfo`
/// (a router not served by [`crate::serve`]) every request counts as one client.
pub(crate) async fn limit(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(limiters) = state.limiters.as_ref() else {
        return next.run(request).await;
    };
    let ip = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip());
    let mut verdict = limiters.check(&limiters.ip, ip);
    if verdict.is_ok() && is_password_route(request.uri().path()) {
        verdict = limiters.check(&limiters.login, ip);
    }
    match verdict {
        Ok(()) => next.run(request).await,
        Err(error) => {
            state
                .metrics
                .counter(
                    "warpcore_http_rate_limited_total",
                    "Requests refused with 429 by the IP or login limits.",
                    &[],
                )
                .add(1);
            error.into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicI64, Ordering};

    use super::*;

    struct ManualClock(AtomicI64);
    impl Clock for ManualClock {
        fn now_unix_ms(&self) -> i64 {
            self.0.load(Ordering::SeqCst)
        }
    }

    fn limits() -> RateLimits {
        RateLimits {
            ip_per_s: 1,
            ip_burst: 2,
            account_per_s: 1,
            account_burst: 1,
            login_per_min: 1,
            login_burst: 1,
            tracked_keys_max: 3,
        }
    }

    #[test]
    fn buckets_empty_and_refill_with_the_injected_clock() {
        let clock = Arc::new(ManualClock(AtomicI64::new(1_000_000)));
        let limiters = Limiters::new(&limits(), clock.clone());
        assert!(limiters.check_account(7).is_ok());
        let Err(ApiError::RateLimited { retry_after_s }) = limiters.check_account(7) else {
            panic!("expected 429");
        };
        assert_eq!(retry_after_s, 1);
        // Another account has its own bucket.
        assert!(limiters.check_account(8).is_ok());
        clock.0.fetch_add(1_000, Ordering::SeqCst);
        assert!(limiters.check_account(7).is_ok());
    }

    #[test]
    fn login_retry_after_counts_whole_seconds() {
        let clock = Arc::new(ManualClock(AtomicI64::new(0)));
        let limiters = Limiters::new(&limits(), clock);
        let ip: IpAddr = "10.0.0.1".parse().expect("ip");
        assert!(limiters.check(&limiters.login, ip).is_ok());
        let Err(ApiError::RateLimited { retry_after_s }) = limiters.check(&limiters.login, ip)
        else {
            panic!("expected 429");
        };
        assert_eq!(retry_after_s, 60);
    }

    #[test]
    fn tracked_keys_are_bounded() {
        let clock = Arc::new(ManualClock(AtomicI64::new(0)));
        let limiters = Limiters::new(&limits(), clock.clone());
        for account in 0..3 {
            assert!(limiters.check_account(account).is_ok());
        }
        // Three tracked, none idle: a fourth client is refused, memory stays bounded.
        assert!(matches!(
            limiters.check_account(3),
            Err(ApiError::RateLimited { .. })
        ));
        assert!(limiters.account.len() <= 3);
        // Once their buckets refill, the idle entries are dropped and room returns.
        clock.0.fetch_add(5_000, Ordering::SeqCst);
        assert!(limiters.check_account(3).is_ok());
        assert!(limiters.account.len() <= 3);
    }
}
