//! Whether a connection is alive, from its pings.
//!
//! rust-libp2p's ping only reports: a connection whose pings fail stays open (and preferred)
//! until the kernel gives up on its socket, many minutes later on a black-holed path. So each
//! connection keeps the time of its last successful ping here, and the swarm task acts on it:
//! a connection that missed two pings is *suspect* (new streams go elsewhere when they can), one
//! with no successful ping for [`LivenessPolicy::timeout`] is *dead* and is closed (its proxied
//! connections are reset, see `muxer`) as soon as its peer has a live connection beside it. A
//! peer's last path is closed only after [`LivenessPolicy::last_path_timeout`]: with no other
//! path, closing it early helps no new stream (they dial afresh beside it anyway) and would
//! reset every long-lived proxied connection on an outage the path survives (a node's uplink
//! down for a few seconds).
//!
//! Time is `tokio::time::Instant`, so the rules are tested with paused time.

use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

/// The ping rules of every connection (from [`TunnelConfig`](crate::TunnelConfig)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LivenessPolicy {
    /// A ping is sent this long after the previous one was answered.
    pub interval: Duration,
    /// No successful ping for this long: the connection is closed.
    pub timeout: Duration,
}

impl LivenessPolicy {
    /// How long a peer's only path may stay silent before it is closed: three liveness
    /// timeouts (15 s by default; `TCP_USER_TIMEOUT` ends a path with unacknowledged bytes
    /// sooner).
    pub(crate) fn last_path_timeout(&self) -> Duration {
        self.timeout * 3
    }

    /// How long a connection may stay silent before it is closed: the liveness timeout while
    /// its peer has a live connection beside it, the last-path timeout otherwise.
    pub(crate) fn close_after(&self, other_path_alive: bool) -> Duration {
        if other_path_alive { self.timeout } else { self.last_path_timeout() }
    }

    /// The age of the last successful ping beyond which a connection is suspect: two pings
    /// missed, plus a margin for a slow answer on a loaded machine.
    pub(crate) fn suspect_after(&self) -> Duration {
        (self.interval * 2 + self.interval / 2).min(self.timeout)
    }
}

/// What a connection's pings say about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ConnectionState {
    /// Answered a ping recently (or was just established).
    Alive,
    /// Missed at least two pings: new streams use another connection if there is one.
    Suspect,
    /// Missed every ping for the liveness timeout: being closed.
    Closing,
}

/// The ping record of one connection.
#[derive(Debug, Clone)]
pub(crate) struct Liveness {
    established: Instant,
    last_ok: Option<Instant>,
    rtt: Option<Duration>,
    /// The peer does not speak the ping protocol: only the socket's own timeouts apply.
    unsupported: bool,
    closing: bool,
}

impl Liveness {
    pub(crate) fn new(now: Instant) -> Self {
        Liveness { established: now, last_ok: None, rtt: None, unsupported: false, closing: false }
    }

    /// A ping was answered after `rtt`.
    pub(crate) fn ping_ok(&mut self, now: Instant, rtt: Duration) {
        self.last_ok = Some(now);
        self.rtt = Some(rtt);
    }

    /// The peer does not answer the ping protocol at all (an agent that turned it off).
    pub(crate) fn ping_unsupported(&mut self) {
        self.unsupported = true;
    }

    /// The connection is being closed (by us, as dead, or for another reason).
    pub(crate) fn set_closing(&mut self) {
        self.closing = true;
    }

    pub(crate) fn rtt(&self) -> Option<Duration> {
        self.rtt
    }

    /// Time since the last successful ping (None: none yet).
    pub(crate) fn last_ping_age(&self, now: Instant) -> Option<Duration> {
        self.last_ok.map(|t| now.saturating_duration_since(t))
    }

    /// Whether the connection missed every ping for the liveness timeout and is not being
    /// closed yet: the swarm task closes it.
    pub(crate) fn is_dead(&self, now: Instant, policy: &LivenessPolicy) -> bool {
        self.silent_at_least(now, policy.timeout)
    }

    /// Whether the connection missed every ping for `bound` and is not being closed yet.
    pub(crate) fn silent_at_least(&self, now: Instant, bound: Duration) -> bool {
        !self.closing && !self.unsupported && self.silent_for(now) >= bound
    }

    pub(crate) fn state(&self, now: Instant, policy: &LivenessPolicy) -> ConnectionState {
        if self.closing || self.is_dead(now, policy) {
            ConnectionState::Closing
        } else if !self.unsupported && self.silent_for(now) >= policy.suspect_after() {
            ConnectionState::Suspect
        } else {
            ConnectionState::Alive
        }
    }

    fn silent_for(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.last_ok.unwrap_or(self.established))
    }
}

/// A connection as path choice sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Candidate {
    pub state: ConnectionState,
    pub relayed: bool,
    /// Order of establishment (newer is preferred).
    pub seq: u64,
}

/// Where a new stream goes: the indexes of `candidates` in order of preference. A live direct
/// connection first, then a live relayed one, then suspect ones (direct first); newest first
/// within each; never a connection being closed.
pub(crate) fn preference(candidates: &[Candidate]) -> Vec<usize> {
    let mut order: Vec<usize> =
        (0..candidates.len()).filter(|&i| candidates[i].state != ConnectionState::Closing).collect();
    order.sort_by_key(|&i| {
        let c = &candidates[i];
        (c.state, c.relayed, std::cmp::Reverse(c.seq))
    });
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: LivenessPolicy = LivenessPolicy { interval: Duration::from_secs(1), timeout: Duration::from_secs(5) };

    #[tokio::test(start_paused = true)]
    async fn missed_pings_make_a_connection_suspect_then_dead() {
        let start = Instant::now();
        let mut l = Liveness::new(start);
        assert_eq!(l.state(Instant::now(), &POLICY), ConnectionState::Alive);
        // Pings answered every second keep it alive.
        for _ in 0..10 {
            tokio::time::advance(Duration::from_secs(1)).await;
            l.ping_ok(Instant::now(), Duration::from_millis(3));
            assert_eq!(l.state(Instant::now(), &POLICY), ConnectionState::Alive);
        }
        // One late answer is not enough to be suspect.
        tokio::time::advance(Duration::from_millis(2400)).await;
        assert_eq!(l.state(Instant::now(), &POLICY), ConnectionState::Alive);
        // Two pings missed: suspect, not dead.
        tokio::time::advance(Duration::from_millis(200)).await;
        assert_eq!(l.state(Instant::now(), &POLICY), ConnectionState::Suspect);
        assert!(!l.is_dead(Instant::now(), &POLICY));
        assert_eq!(l.last_ping_age(Instant::now()), Some(Duration::from_millis(2600)));
        // An answer brings it back.
        l.ping_ok(Instant::now(), Duration::from_millis(900));
        assert_eq!(l.state(Instant::now(), &POLICY), ConnectionState::Alive);
        assert_eq!(l.rtt(), Some(Duration::from_millis(900)));
        // Silent for the whole timeout: dead, and closed once.
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(l.is_dead(Instant::now(), &POLICY));
        assert_eq!(l.state(Instant::now(), &POLICY), ConnectionState::Closing);
        l.set_closing();
        assert!(!l.is_dead(Instant::now(), &POLICY), "closed once, not again");
        assert_eq!(l.state(Instant::now(), &POLICY), ConnectionState::Closing);
    }

    #[tokio::test(start_paused = true)]
    async fn a_peers_last_path_gets_longer_before_it_is_closed() {
        let mut l = Liveness::new(Instant::now());
        l.ping_ok(Instant::now(), Duration::from_millis(1));
        // Silent 6 s: closed when another path is alive, kept as the only one.
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(l.silent_at_least(Instant::now(), POLICY.close_after(true)));
        assert!(!l.silent_at_least(Instant::now(), POLICY.close_after(false)));
        // The outage ends (an uplink back up): answered again, alive again.
        l.ping_ok(Instant::now(), Duration::from_millis(1));
        assert_eq!(l.state(Instant::now(), &POLICY), ConnectionState::Alive);
        // Silent for the last-path timeout: closed even as the only path.
        tokio::time::advance(Duration::from_secs(15)).await;
        assert!(l.silent_at_least(Instant::now(), POLICY.close_after(false)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_connection_has_the_timeout_to_answer_its_first_ping() {
        let l = Liveness::new(Instant::now());
        assert_eq!(l.last_ping_age(Instant::now()), None);
        tokio::time::advance(Duration::from_millis(4900)).await;
        assert!(!l.is_dead(Instant::now(), &POLICY));
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(l.is_dead(Instant::now(), &POLICY));
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_without_ping_is_left_to_the_socket_timeouts() {
        let mut l = Liveness::new(Instant::now());
        l.ping_unsupported();
        tokio::time::advance(Duration::from_secs(600)).await;
        assert!(!l.is_dead(Instant::now(), &POLICY));
        assert_eq!(l.state(Instant::now(), &POLICY), ConnectionState::Alive);
    }

    #[test]
    fn new_streams_prefer_live_direct_then_live_relayed_then_suspect_never_closing() {
        use ConnectionState::*;
        let c = |state, relayed, seq| Candidate { state, relayed, seq };
        let table: &[(&[Candidate], &[usize])] = &[
            // Direct before relayed, newest first.
            (&[c(Alive, true, 1), c(Alive, false, 2), c(Alive, false, 3)], &[2, 1, 0]),
            // A suspect direct connection loses to a live relayed one, but is still a
            // fallback.
            (&[c(Suspect, false, 5), c(Alive, true, 1)], &[1, 0]),
            (&[c(Suspect, true, 1), c(Suspect, false, 2)], &[1, 0]),
            // A connection being closed is never chosen.
            (&[c(Closing, false, 9), c(Alive, true, 1)], &[1]),
            (&[c(Closing, false, 9)], &[]),
            (&[], &[]),
        ];
        for (candidates, expected) in table {
            assert_eq!(preference(candidates), *expected, "{candidates:?}");
        }
    }

    #[test]
    fn suspect_after_is_two_missed_pings_within_the_timeout() {
        assert_eq!(POLICY.suspect_after(), Duration::from_millis(2500));
        let tight = LivenessPolicy { interval: Duration::from_secs(2), timeout: Duration::from_secs(3) };
        assert_eq!(tight.suspect_after(), Duration::from_secs(3));
    }
}
