//! Rate limits as token buckets over caller-supplied time: one pair per connection (packets
//! per second and bytes per second, checked before decryption) and a fixed table of buckets
//! for connection requests per source IP. The table is allocated once and never grows:
//! sources are hashed (with a per-server secret key, so an attacker cannot aim collisions)
//! into [`SOURCE_BUCKETS`] slots, and sources that share a slot share its budget. A flood of
//! requests therefore costs the server a counter, never memory. Not for deciding what a
//! refused packet means (the server counts it) nor for outgoing bandwidth budgets.

use std::hash::Hasher;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

/// Slots of the per-source request table (each 16 bytes: 64 KiB in all).
pub const SOURCE_BUCKETS: usize = 4096;

/// Rate limits of a server; every rate is per second, every burst a bucket size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimits {
    /// Packets per second one connection may send (sustained).
    pub conn_packets_per_s: u32,
    /// Packets a connection may send in a burst above the rate.
    pub conn_packets_burst: u32,
    /// Datagram bytes per second one connection may send (sustained).
    pub conn_bytes_per_s: u32,
    /// Bytes a connection may send in a burst above the rate.
    pub conn_bytes_burst: u32,
    /// Connection requests per second from one source IP (port ignored), checked before
    /// the token is opened (the expensive step).
    pub source_requests_per_s: u32,
    /// Requests one source IP may send in a burst.
    pub source_requests_burst: u32,
}

impl Default for RateLimits {
    /// Generous for a game client (it sends ~20-60 packets/s), tight for a flood: 1000
    /// packets/s and 1 MiB/s per connection with one second of burst; 1000 requests/s per
    /// source IP (bots on one machine share an IP), burst 2000.
    fn default() -> Self {
        Self {
            conn_packets_per_s: 1000,
            conn_packets_burst: 1000,
            conn_bytes_per_s: 1024 * 1024,
            conn_bytes_burst: 1024 * 1024,
            source_requests_per_s: 1000,
            source_requests_burst: 2000,
        }
    }
}

/// A token bucket in milli-tokens, refilled from a millisecond clock the caller supplies.
#[derive(Debug, Clone, Copy)]
pub struct TokenBucket {
    milli_tokens: u64,
    last_ms: u64,
}

impl TokenBucket {
    /// A full bucket.
    pub fn full(burst: u32, now_ms: u64) -> Self {
        Self {
            milli_tokens: u64::from(burst) * 1000,
            last_ms: now_ms,
        }
    }

    /// Takes `cost` tokens if available after refilling at `rate_per_s` up to `burst`.
    pub fn try_take(&mut self, now_ms: u64, rate_per_s: u32, burst: u32, cost: u64) -> bool {
        let elapsed_ms = now_ms.saturating_sub(self.last_ms);
        self.last_ms = self.last_ms.max(now_ms);
        // tokens/s == milli-tokens/ms.
        let refill = elapsed_ms.saturating_mul(u64::from(rate_per_s));
        let cap = u64::from(burst) * 1000;
        self.milli_tokens = self.milli_tokens.saturating_add(refill).min(cap);
        let cost_milli = cost.saturating_mul(1000);
        if self.milli_tokens >= cost_milli {
            self.milli_tokens -= cost_milli;
            true
        } else {
            false
        }
    }
}

/// Milliseconds since `epoch` (saturating; `now` before `epoch` is 0).
pub fn millis_since(epoch: Instant, now: Instant) -> u64 {
    u64::try_from(now.saturating_duration_since(epoch).as_millis()).unwrap_or(u64::MAX)
}

/// The per-connection pair of buckets.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimiter {
    packets: TokenBucket,
    bytes: TokenBucket,
}

impl ConnLimiter {
    pub fn new(limits: &RateLimits, now_ms: u64) -> Self {
        Self {
            packets: TokenBucket::full(limits.conn_packets_burst, now_ms),
            bytes: TokenBucket::full(limits.conn_bytes_burst, now_ms),
        }
    }

    /// `true` if a datagram of `len` bytes is within both budgets (and charges them).
    pub fn allow(&mut self, limits: &RateLimits, now_ms: u64, len: usize) -> bool {
        let packet_ok = self.packets.try_take(
            now_ms,
            limits.conn_packets_per_s,
            limits.conn_packets_burst,
            1,
        );
        packet_ok
            && self.bytes.try_take(
                now_ms,
                limits.conn_bytes_per_s,
                limits.conn_bytes_burst,
                len as u64,
            )
    }
}

/// Fixed-size table of request buckets keyed by a keyed hash of the source IP.
pub struct SourceLimiter {
    key: [u64; 2],
    buckets: Box<[TokenBucket]>,
}

impl SourceLimiter {
    /// `key` is a per-server secret (from the server's seeded RNG).
    pub fn new(key: [u64; 2], limits: &RateLimits) -> Self {
        Self {
            key,
            buckets: vec![TokenBucket::full(limits.source_requests_burst, 0); SOURCE_BUCKETS]
                .into_boxed_slice(),
        }
    }

    fn slot(&self, ip: IpAddr) -> usize {
        // SipHash (std's DefaultHasher) keyed by hashing the secret first.
        let mut h = std::hash::DefaultHasher::new();
        h.write_u64(self.key[0]);
        h.write_u64(self.key[1]);
        match ip {
            IpAddr::V4(v4) => h.write(&v4.octets()),
            IpAddr::V6(v6) => h.write(&v6.octets()),
        }
        (h.finish() % SOURCE_BUCKETS as u64) as usize
    }

    /// `true` if one more request from `from` is within its source's budget.
    pub fn allow(&mut self, limits: &RateLimits, now_ms: u64, from: SocketAddr) -> bool {
        let slot = self.slot(from.ip());
        self.buckets[slot].try_take(
            now_ms,
            limits.source_requests_per_s,
            limits.source_requests_burst,
            1,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_burst_then_rate() {
        let mut b = TokenBucket::full(10, 0);
        let taken = (0..20).filter(|_| b.try_take(0, 100, 10, 1)).count();
        assert_eq!(taken, 10, "burst");
        // 100/s: one token per 10 ms.
        assert!(!b.try_take(9, 100, 10, 1));
        assert!(b.try_take(10, 100, 10, 1));
        // A long pause refills only up to the burst.
        let taken = (0..50).filter(|_| b.try_take(60_000, 100, 10, 1)).count();
        assert_eq!(taken, 10);
        // Clock going backwards never refills.
        assert!(!b.try_take(0, 100, 10, 1));
    }

    #[test]
    fn conn_limiter_checks_packets_and_bytes() {
        let limits = RateLimits {
            conn_packets_per_s: 10,
            conn_packets_burst: 5,
            conn_bytes_per_s: 1000,
            conn_bytes_burst: 1500,
            ..RateLimits::default()
        };
        let mut l = ConnLimiter::new(&limits, 0);
        assert!(l.allow(&limits, 0, 1200));
        assert!(!l.allow(&limits, 0, 1200), "bytes budget");
        assert!(l.allow(&limits, 0, 100));
        let mut l = ConnLimiter::new(&limits, 0);
        let n = (0..10).filter(|_| l.allow(&limits, 0, 1)).count();
        assert_eq!(n, 5, "packet budget");
    }

    #[test]
    fn source_limiter_is_per_ip_and_fixed_size() {
        let limits = RateLimits {
            source_requests_per_s: 1,
            source_requests_burst: 3,
            ..RateLimits::default()
        };
        let mut s = SourceLimiter::new([1, 2], &limits);
        let a: SocketAddr = "192.0.2.1:1000".parse().unwrap();
        let a_other_port: SocketAddr = "192.0.2.1:2000".parse().unwrap();
        let n = (0..10).filter(|_| s.allow(&limits, 0, a)).count();
        assert_eq!(n, 3);
        assert!(
            !s.allow(&limits, 0, a_other_port),
            "ports share the IP's budget"
        );
        assert!(s.allow(&limits, 1000, a), "refilled after 1 s");
        assert_eq!(s.buckets.len(), SOURCE_BUCKETS);
    }
}
