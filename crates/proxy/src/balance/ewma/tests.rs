use std::time::Duration;

use proptest::prelude::*;
use tokio::time::Instant;

use super::*;

const MS: Duration = Duration::from_millis(1);

#[tokio::test(start_paused = true)]
async fn an_endpoint_starts_at_the_default_rtt_and_a_slower_answer_is_taken_at_once() {
    let mut e = PeakEwma::new(Instant::now());
    assert_eq!(e.estimate(Instant::now()), DEFAULT_RTT);
    e.start();
    tokio::time::advance(50 * MS).await;
    e.finish(50 * MS, Instant::now());
    assert_eq!(e.estimate(Instant::now()), 50 * MS, "the peak replaces the estimate");
    assert_eq!(e.pending(), 0);
}

#[tokio::test(start_paused = true)]
async fn faster_answers_pull_the_estimate_down_with_the_decay_time_constant() {
    let mut e = PeakEwma::new(Instant::now());
    e.start();
    e.finish(100 * MS, Instant::now());
    tokio::time::advance(DECAY).await;
    e.start();
    e.finish(Duration::ZERO, Instant::now());
    // 100 ms * e^-1 after one time constant.
    let ms = e.estimate(Instant::now()).as_secs_f64() * 1000.0;
    assert!((ms - 100.0 / std::f64::consts::E).abs() < 0.01, "{ms}");
    // With nothing observed the estimate keeps decaying towards zero.
    tokio::time::advance(DECAY * 5).await;
    assert!(e.estimate(Instant::now()) < MS, "an idle endpoint is tried again");
}

#[tokio::test(start_paused = true)]
async fn requests_in_flight_multiply_the_cost() {
    let now = Instant::now();
    let mut e = PeakEwma::new(now);
    let one = e.cost(now);
    e.start();
    e.start();
    assert_eq!(e.cost(now), one * 3.0);
    e.finish(DEFAULT_RTT, now);
    assert_eq!(e.cost(now), one * 2.0);
}

#[tokio::test(start_paused = true)]
async fn p2c_avoids_a_slow_endpoint_once_it_answered_slowly() {
    let now = Instant::now();
    let mut loads: Vec<PeakEwma> = (0..4).map(|_| PeakEwma::new(now)).collect();
    loads[2].start();
    loads[2].finish(50 * MS, now);
    let mut picks = [0u32; 4];
    for i in 0..1000u64 {
        let chosen = p2c(4, super::super::mix(i), |k| loads[k].cost(now));
        picks[chosen] += 1;
    }
    assert_eq!(picks[2], 0, "the slow one loses every pair it is drawn in: {picks:?}");
    assert!(picks.iter().enumerate().all(|(i, &p)| i == 2 || p > 200), "{picks:?}");
}

proptest! {
    #[test]
    fn p2c_picks_in_range_and_never_the_costlier_of_its_pair(
        costs in proptest::collection::vec(0.0f64..1e9, 1..40),
        random in any::<u64>(),
    ) {
        let n = costs.len();
        let mut drawn = Vec::new();
        let chosen = p2c(n, random, |i| { drawn.push(i); costs[i] });
        prop_assert!(chosen < n);
        if n >= 2 {
            prop_assert_eq!(drawn.len(), 2);
            prop_assert_ne!(drawn[0], drawn[1], "two distinct endpoints");
            prop_assert!(drawn.contains(&chosen));
            prop_assert!(drawn.iter().all(|&i| costs[chosen] <= costs[i]));
        }
    }

    #[test]
    fn the_estimate_is_at_least_the_last_peak_and_never_above_the_highest_seen(
        rtts in proptest::collection::vec((0u64..1_000, 0u64..20_000), 1..50),
    ) {
        let start = Instant::now();
        let mut e = PeakEwma::new(start);
        let mut at = start;
        let mut highest = DEFAULT_RTT;
        // The estimate as last updated (before any decay).
        let mut last = DEFAULT_RTT;
        for (rtt_ms, gap_ms) in rtts {
            at += Duration::from_millis(gap_ms);
            let rtt = Duration::from_millis(rtt_ms);
            e.start();
            e.finish(rtt, at);
            highest = highest.max(rtt);
            let after = e.estimate(at);
            prop_assert!(after <= highest + Duration::from_nanos(1));
            if rtt > last {
                prop_assert_eq!(after, rtt, "a peak is taken at once");
            } else {
                prop_assert!(after + Duration::from_nanos(1) >= rtt && after <= last + Duration::from_nanos(1));
            }
            last = after;
            prop_assert_eq!(e.pending(), 0);
        }
    }
}
