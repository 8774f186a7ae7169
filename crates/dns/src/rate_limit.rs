//! Response rate limiting per client address, over UDP.
//!
//! A token bucket per client address: `rate` queries per second, up to
//! `burst` at once. Past it, as BIND's RRL with its default `slip 2`,
//! every second query is answered with an empty truncated response (TC:
//! header and question, no bigger than the query) and the others get
//! nothing. Dropping stops a spoofed flood from being reflected at its
//! victim; the small TC answers let a real client that was limited
//! (or whose address was spoofed) still get its answer over TCP, where the
//! source cannot be forged and no limit applies. Other clients have their
//! own buckets and are never slowed.
//!
//! Buckets live in sharded maps bounded to [`MAX_CLIENTS`]: when a shard
//! is full its idle buckets (refilled to `burst`, so nothing is lost by
//! forgetting them) are removed, at most once per second; a client that
//! still finds no room is not limited until there is.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

/// Clients tracked at once, over all shards.
pub const MAX_CLIENTS: usize = 65_536;
const SHARDS: usize = 16;

/// What to do with a query from a client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Within the limit: answer.
    Answer,
    /// Over the limit: send nothing.
    Drop,
    /// Over the limit: an empty response with TC (the client retries over TCP).
    Slip,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
    /// Queries over the limit so far (every second one slips).
    limited: u64,
}

#[derive(Debug, Default)]
struct Shard {
    buckets: HashMap<IpAddr, Bucket>,
    /// When the shard was last swept for idle buckets.
    swept: Option<Instant>,
}

/// The per-client buckets (see the module docs).
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    shards: Box<[Mutex<Shard>]>,
}

impl RateLimiter {
    /// `rate` queries per second per client, `burst` at once (at least one).
    pub fn new(rate: u32, burst: u32) -> Self {
        Self {
            rate: f64::from(rate),
            burst: f64::from(burst.max(1)),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }

    /// Takes a token of `client`'s bucket at `now`.
    pub fn check(&self, client: IpAddr, now: Instant) -> Verdict {
        let client = match client {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(client, IpAddr::V4),
            v4 => v4,
        };
        let shard = &self.shards[shard_of(client)];
        let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
        if !shard.buckets.contains_key(&client) && shard.buckets.len() >= MAX_CLIENTS / SHARDS {
            self.sweep(&mut shard, now);
            if shard.buckets.len() >= MAX_CLIENTS / SHARDS {
                return Verdict::Answer;
            }
        }
        let bucket = shard.buckets.entry(client).or_insert(Bucket { tokens: self.burst, last: now, limited: 0 });
        let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate).min(self.burst);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Verdict::Answer;
        }
        bucket.limited += 1;
        if bucket.limited.is_multiple_of(2) { Verdict::Slip } else { Verdict::Drop }
    }

    /// Forgets the buckets that have refilled, at most once per second.
    fn sweep(&self, shard: &mut Shard, now: Instant) {
        if shard.swept.is_some_and(|at| now.saturating_duration_since(at).as_secs() < 1) {
            return;
        }
        shard.swept = Some(now);
        let (rate, burst) = (self.rate, self.burst);
        shard.buckets.retain(|_, b| b.tokens + now.saturating_duration_since(b.last).as_secs_f64() * rate < burst);
    }
}

fn shard_of(client: IpAddr) -> usize {
    // The low bits of the address: clients spread over the shards well
    // enough, and no hashing on the hot path.
    let low = match client {
        IpAddr::V4(v4) => v4.octets()[3],
        IpAddr::V6(v6) => v6.octets()[15],
    };
    usize::from(low) % SHARDS
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_burst_passes_then_half_the_excess_slips_and_tokens_come_back_at_the_rate() {
        let limiter = RateLimiter::new(10, 5);
        let t0 = Instant::now();
        let a = ip("10.0.0.1");
        let first: Vec<_> = (0..9).map(|_| limiter.check(a, t0)).collect();
        use Verdict::*;
        assert_eq!(first, [Answer, Answer, Answer, Answer, Answer, Drop, Slip, Drop, Slip]);
        // Another client is not affected.
        assert_eq!(limiter.check(ip("10.0.0.2"), t0), Answer);
        // 10 per second: one token every 100 ms.
        assert_eq!(limiter.check(a, t0 + Duration::from_millis(50)), Drop);
        assert_eq!(limiter.check(a, t0 + Duration::from_millis(160)), Answer);
        assert_eq!(limiter.check(a, t0 + Duration::from_millis(160)), Slip);
        // Idle long enough: a whole burst again, no more.
        let later = t0 + Duration::from_secs(10);
        assert_eq!((0..6).filter(|_| limiter.check(a, later) == Answer).count(), 5);
        // An IPv4-mapped address is the same client.
        assert_ne!(limiter.check(ip("::ffff:10.0.0.1"), later), Answer);
    }

    #[test]
    fn a_full_table_forgets_idle_clients_and_never_limits_the_untracked() {
        let limiter = RateLimiter::new(1, 2);
        let t0 = Instant::now();
        // Fill every shard with clients that each asked once.
        for i in 0..u32::try_from(MAX_CLIENTS).expect("a table of u32 size") {
            let [_, b, c, d] = i.to_be_bytes();
            assert_eq!(limiter.check(IpAddr::from([10, b, c, d]), t0), Verdict::Answer);
        }
        let newcomer = ip("192.0.2.0");
        // Full and nobody idle yet: the newcomer is answered but not tracked.
        for _ in 0..5 {
            assert_eq!(limiter.check(newcomer, t0), Verdict::Answer);
        }
        // A second later the others have refilled and are forgotten.
        let later = t0 + Duration::from_secs(2);
        assert_eq!(limiter.check(newcomer, later), Verdict::Answer);
        assert_eq!(limiter.check(newcomer, later), Verdict::Answer);
        assert_eq!(limiter.check(newcomer, later), Verdict::Drop);
    }
}
