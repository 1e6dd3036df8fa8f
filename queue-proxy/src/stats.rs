//! Concurrency accounting for the autoscaler: the time-weighted average of in-flight requests
//! over each window, and arrivals, for all requests and for those the activator proxied.
//!
//! Pure: every method takes `now`; the caller owns the clock.

use std::time::{Duration, Instant};

/// One series (all requests, or activator-proxied ones).
#[derive(Clone, Debug)]
pub struct Window {
    in_flight: u64,
    /// Sum of in-flight × seconds since the window started.
    area: f64,
    last_change: Instant,
    arrivals: u64,
}

impl Window {
    pub fn new(now: Instant) -> Self {
        Window {
            in_flight: 0,
            area: 0.0,
            last_change: now,
            arrivals: 0,
        }
    }

    fn advance(&mut self, now: Instant) {
        let dt = now
            .saturating_duration_since(self.last_change)
            .as_secs_f64();
        self.area += self.in_flight as f64 * dt;
        self.last_change = now.max(self.last_change);
    }

    pub fn start(&mut self, now: Instant) {
        self.advance(now);
        self.in_flight += 1;
        self.arrivals += 1;
    }

    pub fn end(&mut self, now: Instant) {
        self.advance(now);
        self.in_flight = self.in_flight.saturating_sub(1);
    }

    pub fn in_flight(&self) -> u64 {
        self.in_flight
    }

    /// Close the window that began at `since`: (average concurrency, arrivals). Requests still
    /// in flight carry over into the next window.
    pub fn roll(&mut self, since: Instant, now: Instant) -> (f64, u64) {
        self.advance(now);
        let len = now.saturating_duration_since(since).as_secs_f64();
        let avg = if len > 0.0 {
            self.area / len
        } else {
            self.in_flight as f64
        };
        let arrivals = self.arrivals;
        self.area = 0.0;
        self.arrivals = 0;
        (avg, arrivals)
    }
}

/// Both series, and the window they are measured over.
#[derive(Clone, Debug)]
pub struct Tracker {
    pub all: Window,
    pub proxied: Window,
    window_start: Instant,
    seq: u64,
}

/// A closed window's figures.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Report {
    pub average_concurrency: f64,
    pub average_proxied_concurrency: f64,
    pub request_count: u64,
    pub proxied_request_count: u64,
    pub window: Duration,
    pub seq: u64,
}

impl Tracker {
    pub fn new(now: Instant) -> Self {
        Tracker {
            all: Window::new(now),
            proxied: Window::new(now),
            window_start: now,
            seq: 0,
        }
    }

    pub fn start(&mut self, now: Instant, proxied: bool) {
        self.all.start(now);
        if proxied {
            self.proxied.start(now);
        }
    }

    pub fn end(&mut self, now: Instant, proxied: bool) {
        self.all.end(now);
        if proxied {
            self.proxied.end(now);
        }
    }

    pub fn roll(&mut self, now: Instant) -> Report {
        let since = self.window_start;
        let (average_concurrency, request_count) = self.all.roll(since, now);
        let (average_proxied_concurrency, proxied_request_count) = self.proxied.roll(since, now);
        self.window_start = now;
        self.seq += 1;
        Report {
            average_concurrency,
            average_proxied_concurrency,
            request_count,
            proxied_request_count,
            window: now.saturating_duration_since(since),
            seq: self.seq,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(base: Instant, ms: u64) -> Instant {
        base + Duration::from_millis(ms)
    }

    #[test]
    fn time_weighted_average() {
        let t0 = Instant::now();
        let mut t = Tracker::new(t0);
        // Two requests for the first half second, one for the second half.
        t.start(t0, false);
        t.start(t0, true);
        t.end(at(t0, 500), true);
        let r = t.roll(at(t0, 1000));
        assert!((r.average_concurrency - 1.5).abs() < 1e-9, "{r:?}");
        assert!((r.average_proxied_concurrency - 0.5).abs() < 1e-9, "{r:?}");
        assert_eq!((r.request_count, r.proxied_request_count, r.seq), (2, 1, 1));
        // The remaining request spans the whole next window; it is not counted as a new arrival.
        let r = t.roll(at(t0, 2000));
        assert!((r.average_concurrency - 1.0).abs() < 1e-9, "{r:?}");
        assert_eq!(r.request_count, 0);
        t.end(at(t0, 2250), false);
        let r = t.roll(at(t0, 3000));
        assert!((r.average_concurrency - 0.25).abs() < 1e-9, "{r:?}");
        assert_eq!(t.all.in_flight(), 0);
    }

    #[test]
    fn short_request_inside_one_window() {
        let t0 = Instant::now();
        let mut t = Tracker::new(t0);
        for i in 0..10 {
            t.start(at(t0, i * 100), false);
            t.end(at(t0, i * 100 + 10), false);
        }
        let r = t.roll(at(t0, 1000));
        assert!((r.average_concurrency - 0.1).abs() < 1e-9, "{r:?}");
        assert_eq!(r.request_count, 10);
    }
}
