//! Per-second buckets of a metric and their window averages.
//!
//! Time is a `Duration` since an epoch the caller chooses (monotonic); bucket `i` holds what was
//! recorded during second `i`. Pure: no clock is read here.

use std::collections::VecDeque;
use std::time::Duration;

use serving_api::autoscaling::Aggregation;

/// A ring of `capacity` one-second buckets.
#[derive(Clone, Debug)]
pub struct Buckets {
    values: Vec<f64>,
    /// Second of the newest bucket written.
    last: Option<u64>,
    /// Second of the first bucket ever written: averages never span time before it.
    first: Option<u64>,
}

fn second(t: Duration) -> u64 {
    t.as_secs()
}

impl Buckets {
    pub fn new(capacity_secs: usize) -> Self {
        Buckets {
            values: vec![0.0; capacity_secs.max(1)],
            last: None,
            first: None,
        }
    }

    fn capacity(&self) -> u64 {
        self.values.len() as u64
    }

    /// Add `value` to the bucket of second `now`. Values older than the ring are dropped.
    pub fn record(&mut self, now: Duration, value: f64) {
        let s = second(now);
        let cap = self.capacity();
        match self.last {
            Some(last) if s + cap <= last => return,
            Some(last) if s > last => {
                // Zero the buckets skipped since the last write (at most the whole ring).
                for gap in (last + 1)..=s.min(last + cap) {
                    self.values[(gap % cap) as usize] = 0.0;
                }
                if s > last + cap {
                    self.values.iter_mut().for_each(|v| *v = 0.0);
                }
                self.last = Some(s);
            }
            None => {
                self.values.iter_mut().for_each(|v| *v = 0.0);
                self.last = Some(s);
            }
            Some(_) => {}
        }
        self.first = Some(self.first.map_or(s, |f| f.min(s)));
        self.values[(s % cap) as usize] += value;
    }

    /// Whether nothing was recorded in the last `window` before `now`.
    pub fn is_empty_since(&self, now: Duration, window: Duration) -> bool {
        self.last
            .is_none_or(|last| second(now).saturating_sub(last) >= window.as_secs().max(1))
    }

    /// Average over the `window` seconds up to and including `now`'s second. Seconds with no
    /// data count as 0; a series younger than the window is averaged over its own age.
    pub fn average(&self, now: Duration, window: Duration, how: Aggregation) -> f64 {
        let (Some(last), Some(first)) = (self.last, self.first) else {
            return 0.0;
        };
        let now_s = second(now).max(last);
        let n = window.as_secs().clamp(1, self.capacity());
        let n = n.min(now_s.saturating_sub(first) + 1);
        let value_at = |s: u64| {
            if s > last || last - s >= self.capacity() {
                0.0
            } else {
                self.values[(s % self.capacity()) as usize]
            }
        };
        match how {
            Aggregation::Linear => (0..n).map(|k| value_at(now_s - k)).sum::<f64>() / n as f64,
            Aggregation::WeightedExponential => {
                // Weight of the k-th newest second: α(1-α)^k with the usual span α = 2/(N+1).
                let alpha = 2.0 / (window.as_secs().max(1) as f64 + 1.0);
                let (mut sum, mut weights, mut w) = (0.0, 0.0, alpha);
                for k in 0..n {
                    sum += w * value_at(now_s - k);
                    weights += w;
                    w *= 1.0 - alpha;
                }
                if weights > 0.0 { sum / weights } else { 0.0 }
            }
        }
    }
}

/// The maximum of values recorded over a sliding window (for scale-down-delay).
#[derive(Clone, Debug, Default)]
pub struct MaxWindow {
    /// (time, value), values decreasing from front to back.
    entries: VecDeque<(Duration, i32)>,
}

impl MaxWindow {
    pub fn record(&mut self, now: Duration, value: i32) {
        while self.entries.back().is_some_and(|(_, v)| *v <= value) {
            self.entries.pop_back();
        }
        self.entries.push_back((now, value));
    }

    /// Max over (now - window, now].
    pub fn max(&mut self, now: Duration, window: Duration) -> Option<i32> {
        while self
            .entries
            .front()
            .is_some_and(|(t, _)| now.saturating_sub(*t) >= window)
            && self.entries.len() > 1
        {
            self.entries.pop_front();
        }
        if self
            .entries
            .front()
            .is_some_and(|(t, _)| now.saturating_sub(*t) >= window)
        {
            self.entries.pop_front();
        }
        self.entries.front().map(|(_, v)| *v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn linear_average_counts_gaps_as_zero() {
        let mut b = Buckets::new(60);
        for t in 0..60 {
            if t % 2 == 0 {
                b.record(s(t), 4.0);
            }
        }
        assert!((b.average(s(59), s(60), Aggregation::Linear) - 2.0).abs() < 1e-9);
        // Panic window of 6 s: 3 of 6 seconds had 4.0.
        assert!((b.average(s(59), s(6), Aggregation::Linear) - 2.0).abs() < 1e-9);
    }

    #[test]
    fn young_series_averages_over_its_age() {
        let mut b = Buckets::new(60);
        b.record(s(100), 3.0);
        b.record(s(101), 3.0);
        assert!((b.average(s(101), s(60), Aggregation::Linear) - 3.0).abs() < 1e-9);
        assert!(
            (b.average(s(103), s(60), Aggregation::Linear) - 1.5).abs() < 1e-9,
            "two silent seconds since"
        );
    }

    #[test]
    fn old_data_falls_out_of_the_window() {
        let mut b = Buckets::new(60);
        b.record(s(0), 10.0);
        assert_eq!(b.average(s(200), s(60), Aggregation::Linear), 0.0);
        b.record(s(200), 6.0);
        assert!(b.average(s(200), s(6), Aggregation::Linear) > 0.0);
        assert!(b.is_empty_since(s(300), s(60)));
        assert!(!b.is_empty_since(s(230), s(60)));
    }

    #[test]
    fn values_in_one_second_add_up() {
        let mut b = Buckets::new(10);
        b.record(Duration::from_millis(5_100), 1.0);
        b.record(Duration::from_millis(5_900), 2.0);
        assert!((b.average(s(5), s(1), Aggregation::Linear) - 3.0).abs() < 1e-9);
    }

    #[test]
    fn weighted_favours_recent_seconds() {
        let mut rising = Buckets::new(60);
        let mut falling = Buckets::new(60);
        for t in 0..60 {
            rising.record(s(t), t as f64);
            falling.record(s(t), 59.0 - t as f64);
        }
        let lin = rising.average(s(59), s(60), Aggregation::Linear);
        let up = rising.average(s(59), s(60), Aggregation::WeightedExponential);
        let down = falling.average(s(59), s(60), Aggregation::WeightedExponential);
        assert!(up > lin && down < lin, "{up} {lin} {down}");
        let mut flat = Buckets::new(60);
        (0..60).for_each(|t| flat.record(s(t), 5.0));
        assert!((flat.average(s(59), s(60), Aggregation::WeightedExponential) - 5.0).abs() < 1e-9);
    }

    #[test]
    fn max_window() {
        let mut m = MaxWindow::default();
        m.record(s(0), 5);
        m.record(s(10), 2);
        m.record(s(20), 3);
        assert_eq!(m.max(s(20), s(30)), Some(5));
        assert_eq!(m.max(s(31), s(30)), Some(3));
        assert_eq!(m.max(s(100), s(30)), None);
    }
}
