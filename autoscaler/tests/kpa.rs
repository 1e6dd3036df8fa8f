//! Time-stepping scenarios for the KPA: simulated instances report every second, decisions
//! every 2 s, and the simulated runtime follows the decision.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on broken fixtures

use std::collections::BTreeMap;
use std::time::Duration;

use autoscaler::collector::Source;
use autoscaler::{Autoscaler, Decision, RevisionKey};
use serving_api::config::AutoscalerConfig;
use wire::Stat;

fn scaling(
    pairs: &[(&str, &str)],
    cc: i64,
    cfg: &AutoscalerConfig,
) -> serving_api::autoscaling::RevisionScaling {
    let a: BTreeMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (format!("autoscaling.knative.dev/{k}"), v.to_string()))
        .collect();
    serving_api::autoscaling::resolve(&a, cc, cfg, "a").unwrap()
}

struct Sim {
    a: Autoscaler,
    key: RevisionKey,
    t: u64,
    ready: u32,
    seq: u64,
    /// Seconds an instance takes to become ready after it is asked for.
    startup: u64,
    pending: Vec<(u64, u32)>,
    history: Vec<(u64, Decision)>,
}

impl Sim {
    fn new(pairs: &[(&str, &str)], cc: i64, cfg: AutoscalerConfig, ready: u32) -> Sim {
        let key = RevisionKey::new("default", "hello-00001");
        let mut a = Autoscaler::new(&cfg);
        a.upsert(key.clone(), scaling(pairs, cc, &cfg), Duration::ZERO, ready);
        Sim {
            a,
            key,
            t: 0,
            ready,
            seq: 0,
            startup: 0,
            pending: vec![],
            history: vec![],
        }
    }

    fn now(&self) -> Duration {
        Duration::from_secs(self.t)
    }

    /// Run `secs` seconds with `load` concurrent requests (and `rps` requests per second).
    fn run(&mut self, secs: u64, load: f64) -> &mut Self {
        for _ in 0..secs {
            self.t += 1;
            self.seq += 1;
            let now = self.now();
            // Instances asked for earlier come up.
            let (up, waiting): (Vec<_>, Vec<_>) =
                self.pending.iter().partition(|(at, _)| *at <= self.t);
            self.pending = waiting;
            if let Some((_, n)) = up.last() {
                self.ready = *n;
                self.a.set_ready(&self.key, self.ready);
            }
            if self.ready == 0 {
                if load > 0.0 {
                    let stat = Stat {
                        average_concurrency: load,
                        request_count: load,
                        window: 1.0,
                        ..Stat::default()
                    };
                    self.a.record(&self.key, now, &stat, Source::Activator);
                }
            } else {
                for pod in 0..self.ready {
                    let per = load / f64::from(self.ready);
                    let stat = Stat {
                        pod_name: format!("pod-{pod}"),
                        average_concurrency: per,
                        request_count: per * 10.0,
                        window: 1.0,
                        seq: self.seq,
                        ..Stat::default()
                    };
                    self.a.record(&self.key, now, &stat, Source::QueueProxy);
                }
            }
            if self.t.is_multiple_of(2) {
                let d = self.a.decide(&self.key, now).unwrap();
                self.history.push((self.t, d));
                self.apply(d.desired);
            }
        }
        self
    }

    fn apply(&mut self, desired: i32) {
        let desired = desired.max(0) as u32;
        if desired < self.ready || self.startup == 0 {
            self.ready = desired;
            self.a.set_ready(&self.key, self.ready);
        } else if desired > self.ready && !self.pending.iter().any(|(_, n)| *n == desired) {
            self.pending.push((self.t + self.startup, desired));
        }
    }

    fn desired(&self) -> i32 {
        self.history.last().map_or(-1, |(_, d)| d.desired)
    }

    fn panicking(&self) -> bool {
        self.history.last().is_some_and(|(_, d)| d.panicking)
    }
}

fn cfg() -> AutoscalerConfig {
    AutoscalerConfig::default()
}

#[test]
fn ramp_up_and_steady_load() {
    // Target 100 × 70% = 70 per instance; 700 concurrent needs 10.
    let mut s = Sim::new(&[], 0, cfg(), 1);
    s.run(120, 700.0);
    assert_eq!(s.desired(), 10);
    let steady: Vec<i32> = {
        s.history.clear();
        s.run(300, 700.0);
        s.history.iter().map(|(_, d)| d.desired).collect()
    };
    assert!(
        steady.iter().all(|d| *d == 10),
        "steady load holds steady: {steady:?}"
    );
    assert!(!s.panicking());
}

#[test]
fn burst_enters_panic_and_never_scales_down_while_panicking() {
    let mut s = Sim::new(&[], 0, cfg(), 1);
    s.startup = 4;
    s.run(120, 60.0);
    assert_eq!(s.desired(), 1);
    s.history.clear();
    // A burst: 10× the load.
    s.run(10, 700.0);
    assert!(s.panicking(), "{:?}", s.history);
    assert!(
        s.desired() >= 10,
        "panic reacts within the panic window: {:?}",
        s.history
    );
    let peak = s.desired();
    // Load drops back; still panicking for a stable window: no scale-down at all.
    s.history.clear();
    s.run(50, 60.0);
    assert!(
        s.history
            .iter()
            .all(|(_, d)| d.panicking && d.desired >= peak),
        "{:?}",
        s.history
    );
}

#[test]
fn panic_exits_only_after_a_full_stable_window() {
    let mut s = Sim::new(&[], 0, cfg(), 1);
    s.run(60, 60.0);
    let burst_from = s.t;
    s.history.clear();
    s.run(6, 700.0);
    assert!(s.panicking());
    let entered = s
        .history
        .iter()
        .find(|(_, d)| d.panicking)
        .map(|(t, _)| *t)
        .expect("panic entered");
    let over_until = s.t;
    s.history.clear();
    s.run(120, 60.0);
    let exit = s
        .history
        .iter()
        .find(|(_, d)| !d.panicking)
        .map(|(t, _)| *t)
        .expect("panic ends");
    // The last over-threshold decision lies between entering panic and the end of the burst.
    assert!(
        entered > burst_from && exit >= entered + 60,
        "left panic at {exit}, entered at {entered}"
    );
    assert!(exit <= over_until + 62, "{exit}");
    assert_eq!(s.desired(), 1, "then scales back down");
}

#[test]
fn zero_only_after_window_plus_grace() {
    let mut s = Sim::new(&[], 0, cfg(), 1);
    s.run(90, 50.0);
    let stopped = s.t;
    s.history.clear();
    s.run(200, 0.0);
    let zero_at = s
        .history
        .iter()
        .find(|(_, d)| d.desired == 0)
        .map(|(t, _)| *t)
        .expect("reaches zero");
    // No traffic for the stable window (60 s), then the grace period (30 s).
    assert!(
        zero_at >= stopped + 60 + 30,
        "zero at {zero_at}, traffic stopped at {stopped}"
    );
    assert!(zero_at <= stopped + 60 + 30 + 4, "{zero_at}");
    assert!(
        s.history
            .iter()
            .filter(|(t, _)| *t > zero_at)
            .all(|(_, d)| d.desired == 0)
    );
}

#[test]
fn pod_retention_extends_the_hold() {
    let mut s = Sim::new(&[("scale-to-zero-pod-retention-period", "2m")], 0, cfg(), 1);
    s.run(90, 50.0);
    let stopped = s.t;
    s.history.clear();
    s.run(300, 0.0);
    let zero_at = s
        .history
        .iter()
        .find(|(_, d)| d.desired == 0)
        .map(|(t, _)| *t)
        .expect("reaches zero");
    assert!(
        zero_at >= stopped + 60 + 120 && zero_at <= stopped + 60 + 124,
        "{zero_at} vs {stopped}"
    );
}

#[test]
fn scale_to_zero_can_be_disabled() {
    let c = AutoscalerConfig {
        enable_scale_to_zero: false,
        ..cfg()
    };
    let mut s = Sim::new(&[], 0, c, 1);
    s.run(300, 0.0);
    assert_eq!(s.desired(), 1);
}

#[test]
fn scale_down_delay_holds_the_peak() {
    let mut s = Sim::new(
        &[("scale-down-delay", "60s"), ("window", "6s")],
        0,
        cfg(),
        1,
    );
    s.run(20, 700.0);
    assert_eq!(s.desired(), 10);
    let dropped = s.t;
    s.history.clear();
    s.run(90, 70.0);
    let down = s
        .history
        .iter()
        .find(|(_, d)| d.desired < 10)
        .map(|(t, _)| *t)
        .expect("eventually scales down");
    assert!(
        down >= dropped + 60,
        "scaled down at {down}, load dropped at {dropped}"
    );
    // Each step down (bounded by max-scale-down-rate) is held for the delay again.
    s.run(200, 70.0);
    assert_eq!(s.desired(), 1);
}

#[test]
fn min_scale_is_a_floor_and_max_scale_a_ceiling() {
    let mut s = Sim::new(&[("min-scale", "3"), ("max-scale", "5")], 0, cfg(), 3);
    s.run(300, 0.0);
    assert_eq!(s.desired(), 3, "min-scale keeps instances with no traffic");
    s.run(120, 7000.0);
    assert_eq!(s.desired(), 5, "max-scale caps");
}

#[test]
fn initial_scale_until_first_reached() {
    let mut s = Sim::new(&[("initial-scale", "4")], 0, cfg(), 0);
    s.startup = 6;
    s.run(4, 0.0);
    assert_eq!(
        s.desired(),
        4,
        "a new revision is brought to its initial scale"
    );
    s.run(200, 0.0);
    assert_eq!(
        s.desired(),
        0,
        "then no longer held there: no traffic, so zero"
    );
}

#[test]
fn activation_scale_on_wake() {
    let mut s = Sim::new(&[("activation-scale", "3")], 0, cfg(), 0);
    let key = s.key.clone();
    let d = s.a.poke(&key, Duration::from_secs(1), 1.0).unwrap();
    assert_eq!(d.desired, 3, "one request wakes three instances");
}

#[test]
fn poke_decides_at_once_from_zero() {
    let mut s = Sim::new(&[], 0, cfg(), 1);
    s.run(200, 0.0);
    assert_eq!(s.desired(), 0);
    s.ready = 0;
    let key = s.key.clone();
    let now = Duration::from_secs(s.t) + Duration::from_millis(300);
    let d = s.a.poke(&key, now, 300.0).unwrap();
    assert_eq!(d.desired, 1, "the first request wakes the revision at once");
    // The activator keeps reporting the 300 held requests every second: panic scales up
    // before any instance is ready.
    let mut last = d;
    for i in 1..=6 {
        last = s.a.poke(&key, now + Duration::from_secs(i), 300.0).unwrap();
    }
    assert!(
        last.panicking && last.desired >= 5,
        "300 held requests at 70 per instance: {last:?}"
    );
}

#[test]
fn rps_metric() {
    // Each simulated instance reports 10 rps per concurrent request; 200 rps × 70% target.
    let mut s = Sim::new(&[("metric", "rps")], 0, cfg(), 1);
    s.run(120, 70.0);
    // 700 rps / 140 per instance = 5.
    assert_eq!(s.desired(), 5);
}

#[test]
fn container_concurrency_sets_the_target() {
    let mut s = Sim::new(&[], 10, cfg(), 1);
    s.run(120, 70.0);
    // CC 10 × 70% = 7 per instance.
    assert_eq!(s.desired(), 10);
}

#[test]
fn restart_with_ready_instances_starts_in_panic_holding_scale() {
    let mut s = Sim::new(&[], 0, cfg(), 8);
    s.run(2, 70.0);
    assert!(s.panicking());
    assert_eq!(s.desired(), 8, "no capacity lost on restart");
}

#[test]
fn proxied_requests_count_once() {
    let c = cfg();
    let key = RevisionKey::new("default", "r");
    let mut a = Autoscaler::new(&c);
    a.upsert(
        key.clone(),
        scaling(&[("window", "6s")], 0, &c),
        Duration::ZERO,
        1,
    );
    for t in 1..=6 {
        let now = Duration::from_secs(t);
        // 140 concurrent at the instance, all of them forwarded by the activator, which
        // reports them too.
        let qp = Stat {
            pod_name: "p".into(),
            average_concurrency: 140.0,
            average_proxied_concurrency: 140.0,
            seq: t,
            window: 1.0,
            ..Stat::default()
        };
        let act = Stat {
            pod_name: "activator".into(),
            average_concurrency: 140.0,
            window: 1.0,
            ..Stat::default()
        };
        assert!(a.record(&key, now, &qp, Source::QueueProxy));
        assert!(
            !a.record(&key, now, &qp, Source::QueueProxy),
            "a repeated window is ignored"
        );
        a.record(&key, now, &act, Source::Activator);
    }
    assert_eq!(
        a.decide(&key, Duration::from_secs(6)).unwrap().desired,
        2,
        "140 / 70, not 280 / 70"
    );
}

#[test]
fn pokes_within_a_second_count_the_queue_once() {
    // The gateway pokes once per held request, each time with the whole queue (1, 2, ... 20):
    // that is 20 requests of demand, not 210.
    let mut s = Sim::new(&[], 0, cfg(), 0);
    let key = s.key.clone();
    let now = Duration::from_secs(3);
    let mut last = None;
    for q in 1..=20 {
        last = s.a.poke(&key, now + Duration::from_millis(q), q as f64);
    }
    assert_eq!(
        last.unwrap().desired,
        1,
        "20 held requests at 70 per instance: one"
    );
}
