//! A Revision's conditions from its workload, the same for Kubernetes and local instances.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on broken fixtures

mod common;

use common::*;
use serving_api::condition::Condition;
use serving_controller::revision::{Activity, ContainerFailure, WorkloadState, revision_status};

fn state(exists: bool, ready: i32, desired: i32, activity: Activity) -> WorkloadState {
    WorkloadState {
        exists,
        ready_replicas: ready,
        desired_replicas: desired,
        progress_deadline_exceeded: false,
        failure: None,
        activity,
        waiting: None,
        image_digests: Vec::new(),
    }
}

fn pull_error() -> Option<ContainerFailure> {
    Some(ContainerFailure {
        reason: "ImagePullBackOff".into(),
        message: "image ebb/nope not found".into(),
    })
}

type Want = [(&'static str, &'static str, &'static str); 4];

/// Rows: name, previous conditions, workload, want (Active, ContainerHealthy, Ready, ResourcesAvailable).
#[test]
fn revision_status_table() {
    let served = vec![
        ready("Ready"),
        ready("ResourcesAvailable"),
        ready("ContainerHealthy"),
    ];
    let rows: Vec<(&str, Vec<Condition>, WorkloadState, Want)> = vec![
        (
            "workload not created",
            vec![],
            state(false, 0, 1, Activity::Activating { queued: false }),
            [
                ("Active", "Unknown", "Activating"),
                ("ContainerHealthy", "Unknown", ""),
                ("Ready", "Unknown", "Deploying"),
                ("ResourcesAvailable", "Unknown", "Deploying"),
            ],
        ),
        (
            "first instance up",
            vec![],
            state(true, 1, 1, Activity::Active),
            [
                ("Active", "True", ""),
                ("ContainerHealthy", "True", ""),
                ("Ready", "True", ""),
                ("ResourcesAvailable", "True", ""),
            ],
        ),
        (
            "created at zero (initial-scale 0) is Ready without instances",
            vec![],
            state(true, 0, 0, Activity::Idle),
            [
                ("Active", "False", "NoTraffic"),
                ("ContainerHealthy", "True", ""),
                ("Ready", "True", ""),
                ("ResourcesAvailable", "True", ""),
            ],
        ),
        (
            "scaled to zero stays Ready",
            served.clone(),
            state(true, 0, 0, Activity::Idle),
            [
                ("Active", "False", "NoTraffic"),
                ("ContainerHealthy", "True", ""),
                ("Ready", "True", ""),
                ("ResourcesAvailable", "True", ""),
            ],
        ),
        (
            "waking with requests queued",
            served.clone(),
            state(true, 0, 1, Activity::Activating { queued: true }),
            [
                ("Active", "Unknown", "Queued"),
                ("ContainerHealthy", "True", ""),
                ("Ready", "True", ""),
                ("ResourcesAvailable", "True", ""),
            ],
        ),
        (
            "image pull error on a new revision",
            vec![],
            WorkloadState {
                failure: pull_error(),
                ..state(true, 0, 1, Activity::Activating { queued: false })
            },
            [
                ("Active", "Unknown", "Activating"),
                ("ContainerHealthy", "False", "ImagePullBackOff"),
                ("Ready", "False", "ImagePullBackOff"),
                ("ResourcesAvailable", "Unknown", "Deploying"),
            ],
        ),
        (
            "progress deadline exceeded",
            vec![],
            WorkloadState {
                progress_deadline_exceeded: true,
                failure: pull_error(),
                ..state(true, 0, 1, Activity::Activating { queued: false })
            },
            [
                ("Active", "False", "TimedOut"),
                ("ContainerHealthy", "False", "ImagePullBackOff"),
                ("Ready", "False", "ProgressDeadlineExceeded"),
                ("ResourcesAvailable", "False", "ProgressDeadlineExceeded"),
            ],
        ),
        (
            "one crashing instance among ready ones is not a failure",
            served.clone(),
            WorkloadState {
                failure: Some(ContainerFailure {
                    reason: "CrashLoopBackOff".into(),
                    message: "".into(),
                }),
                ..state(true, 2, 3, Activity::Active)
            },
            [
                ("Active", "True", ""),
                ("ContainerHealthy", "True", ""),
                ("Ready", "True", ""),
                ("ResourcesAvailable", "True", ""),
            ],
        ),
    ];
    for (name, previous, w, want) in rows {
        let mut rev = revision("hello-00001", "hello", 1, None);
        rev.metadata.generation = Some(1);
        rev.status = Some(serving_api::RevisionStatus {
            conditions: previous,
            ..Default::default()
        });
        let st = revision_status(&rev, &w);
        let want: Vec<_> = want
            .iter()
            .map(|(t, s, r)| (t.to_string(), *s, r.to_string()))
            .collect();
        assert_eq!(summary(&st.conditions), want, "row {name}");
        assert_eq!(
            (st.actual_replicas, st.desired_replicas),
            (Some(w.ready_replicas), Some(w.desired_replicas)),
            "row {name}"
        );
        assert_eq!(st.observed_generation, Some(1));
    }
}

/// What a deploying workload waits for is the ResourcesAvailable message, so `describe` says
/// "Pulling image …" instead of nothing.
#[test]
fn waiting_is_the_deploying_message() {
    let rev = revision("hello-00001", "hello", 1, None);
    let w = WorkloadState {
        waiting: Some("Pulling image registry.example/hello:1".into()),
        ..state(true, 0, 1, Activity::Activating { queued: true })
    };
    let st = revision_status(&rev, &w);
    let ra = st
        .conditions
        .iter()
        .find(|c| c.type_ == "ResourcesAvailable")
        .unwrap();
    assert_eq!(ra.reason.as_deref(), Some("Deploying"));
    assert_eq!(
        ra.message.as_deref(),
        Some("Pulling image registry.example/hello:1")
    );
}

/// Digests are recorded once and kept by later statuses that do not resolve them again, so a
/// revision keeps naming the image it was created with.
#[test]
fn image_digests_are_kept_once_recorded() {
    let pinned = vec![serving_api::revision::ContainerStatus {
        name: "user-container".into(),
        image_digest: "registry.example/hello@sha256:abc".into(),
    }];
    let mut rev = revision("hello-00001", "hello", 1, None);
    let w = WorkloadState {
        image_digests: pinned.clone(),
        ..state(true, 1, 1, Activity::Active)
    };
    let st = revision_status(&rev, &w);
    assert_eq!(st.container_statuses, pinned);
    rev.status = Some(st);
    let later = revision_status(&rev, &state(true, 0, 0, Activity::Idle));
    assert_eq!(later.container_statuses, pinned);
}
