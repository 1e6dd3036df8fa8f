//! The KPA decision for one revision: Knative's formulas (see shared/reference), as a pure
//! function of time, observed load and ready instances.

use std::time::Duration;

use serving_api::autoscaling::RevisionScaling;
use serving_api::config::AutoscalerConfig;

use crate::aggregation::MaxWindow;

/// Cluster-wide knobs (config-autoscaler keys that are not per revision).
#[derive(Clone, Debug, PartialEq)]
pub struct ClusterScaling {
    pub max_scale_up_rate: f64,
    pub max_scale_down_rate: f64,
    pub enable_scale_to_zero: bool,
    pub scale_to_zero_grace_period: Duration,
}

impl From<&AutoscalerConfig> for ClusterScaling {
    fn from(c: &AutoscalerConfig) -> Self {
        ClusterScaling {
            max_scale_up_rate: c.max_scale_up_rate,
            max_scale_down_rate: c.max_scale_down_rate,
            enable_scale_to_zero: c.enable_scale_to_zero,
            scale_to_zero_grace_period: c.scale_to_zero_grace_period,
        }
    }
}

/// What one decision observed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Observed {
    /// Stable-window average of the metric, over all instances.
    pub stable: f64,
    /// Panic-window average.
    pub panic: f64,
    /// Instances ready now.
    pub ready: u32,
}

/// The outcome of one decision.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Decision {
    pub desired: i32,
    pub panicking: bool,
    /// What the decision saw.
    pub observed: Observed,
    /// Spare capacity beyond target-burst-capacity; negative means the activator should stay
    /// in the request path to absorb bursts.
    pub excess_burst_capacity: f64,
}

/// Decision state of one revision.
#[derive(Clone, Debug)]
pub struct Decider {
    pub scaling: RevisionScaling,
    cluster: ClusterScaling,
    created: Duration,
    /// When panic mode was entered, and the last time load was over the panic threshold.
    panic_since: Option<Duration>,
    last_over_threshold: Duration,
    max_panic_pods: i32,
    reached_initial: bool,
    zero_since: Option<Duration>,
    delay: MaxWindow,
}

impl Decider {
    /// A decider created at `now`. Finding more than one instance ready (an autoscaler restart),
    /// it starts in panic mode holding the current scale, so a restart loses no capacity.
    pub fn new(
        scaling: RevisionScaling,
        cluster: ClusterScaling,
        now: Duration,
        ready: u32,
    ) -> Self {
        let inherited = ready > 1;
        Decider {
            created: now,
            panic_since: inherited.then_some(now),
            last_over_threshold: now,
            max_panic_pods: if inherited { ready as i32 } else { 0 },
            reached_initial: inherited || ready as i32 >= scaling.initial_scale,
            zero_since: None,
            delay: MaxWindow::default(),
            scaling,
            cluster,
        }
    }

    pub fn is_panicking(&self) -> bool {
        self.panic_since.is_some()
    }

    /// Replace the revision's settings (annotations changed), keeping the state.
    pub fn update(&mut self, scaling: RevisionScaling, cluster: ClusterScaling) {
        self.scaling = scaling;
        self.cluster = cluster;
    }

    pub fn decide(&mut self, now: Duration, o: Observed) -> Decision {
        let s = &self.scaling;
        let target = s.effective_target();
        let ready = f64::from(o.ready.max(1));
        let max_up = (self.cluster.max_scale_up_rate * ready).ceil();
        let max_down = (ready / self.cluster.max_scale_down_rate).floor();
        let want = |load: f64| ((load / target).ceil()).clamp(max_down, max_up) as i32;
        let (want_stable, want_panic) = (want(o.stable), want(o.panic));

        // Panic: entered when the panic-window demand reaches the threshold times what is
        // ready; left only after a whole stable window below it.
        let over = (o.panic / target).ceil() / ready >= s.panic_threshold_percentage / 100.0;
        if over {
            self.last_over_threshold = now;
            if self.panic_since.is_none() {
                self.panic_since = Some(now);
            }
        } else if self.panic_since.is_some()
            && now.saturating_sub(self.last_over_threshold) >= s.stable_window
        {
            self.panic_since = None;
            self.max_panic_pods = 0;
        }
        let mut desired = if self.panic_since.is_some() {
            // Never scale down while panicking.
            self.max_panic_pods = self.max_panic_pods.max(want_stable).max(want_panic);
            self.max_panic_pods
        } else {
            want_stable
        };

        if desired > 0
            && let Some(a) = s.activation_scale
        {
            desired = desired.max(a);
        }
        if !s.scale_down_delay.is_zero() {
            self.delay.record(now, desired);
            desired = self
                .delay
                .max(now, s.scale_down_delay)
                .unwrap_or(desired)
                .max(desired);
        }

        // Zero: only with no traffic for a whole stable window (observed, not assumed: the
        // decider must be that old), then only after the grace period / pod retention.
        if desired == 0 {
            let since = *self.zero_since.get_or_insert(now);
            let hold = self
                .cluster
                .scale_to_zero_grace_period
                .max(s.scale_to_zero_pod_retention);
            let seen_window = now.saturating_sub(self.created) >= s.stable_window;
            // Running instances are kept until the rule is met; none are started just to
            // observe a window (a revision created at zero stays there until traffic comes).
            let keep = o.ready > 0 && (!seen_window || now.saturating_sub(since) < hold);
            if !self.cluster.enable_scale_to_zero || keep {
                desired = 1;
            }
        } else {
            self.zero_since = None;
        }

        let mut min = s.min_scale;
        if !self.reached_initial {
            min = min.max(s.initial_scale);
        }
        desired = desired.max(min);
        if s.max_scale > 0 {
            desired = desired.min(s.max_scale);
        }
        if o.ready as i32 >= s.initial_scale {
            self.reached_initial = true;
        }

        let total_capacity = f64::from(o.ready) * s.target;
        let excess_burst_capacity = if s.target_burst_capacity < 0.0 {
            -1.0
        } else {
            total_capacity - s.target_burst_capacity - o.panic
        };
        Decision {
            desired,
            panicking: self.panic_since.is_some(),
            observed: o,
            excess_burst_capacity,
        }
    }
}
