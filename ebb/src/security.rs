//! A container's `securityContext` (with the pod's) and `resources`, honoured as the kubelet
//! would: by podman's flags (user, groups, read-only root, capabilities, no-new-privileges,
//! seccomp, cgroup limits), or for a host process by `setpriv` (user, groups,
//! no-new-privileges, bounding capabilities). What a runtime cannot honour fails the revision
//! naming the field and what would honour it — never ignored.

use k8s_openapi::api::core::v1::{Container, PodSpec};

use crate::resolve::quantity;

/// The container's security settings, the pod's filled in where the container sets none.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Effective {
    pub run_as_user: Option<i64>,
    pub run_as_group: Option<i64>,
    pub run_as_non_root: bool,
    pub read_only_root: bool,
    pub no_new_privileges: bool,
    pub privileged: bool,
    pub caps_add: Vec<String>,
    pub caps_drop: Vec<String>,
    pub seccomp: Option<String>,
    pub groups: Vec<i64>,
    /// Fields neither runtime can honour here (SELinux, AppArmor, procMount, Windows, sysctls).
    pub unsupported: Vec<String>,
}

pub fn effective(pod: &PodSpec, c: &Container, field: &str) -> Effective {
    let p = pod.security_context.clone().unwrap_or_default();
    let s = c.security_context.clone().unwrap_or_default();
    let mut e = Effective {
        run_as_user: s.run_as_user.or(p.run_as_user),
        run_as_group: s.run_as_group.or(p.run_as_group),
        run_as_non_root: s.run_as_non_root.or(p.run_as_non_root).unwrap_or(false),
        read_only_root: s.read_only_root_filesystem.unwrap_or(false),
        no_new_privileges: s.allow_privilege_escalation == Some(false),
        privileged: s.privileged.unwrap_or(false),
        caps_add: s
            .capabilities
            .as_ref()
            .and_then(|c| c.add.clone())
            .unwrap_or_default(),
        caps_drop: s
            .capabilities
            .as_ref()
            .and_then(|c| c.drop.clone())
            .unwrap_or_default(),
        seccomp: s.seccomp_profile.or(p.seccomp_profile).map(|p| p.type_),
        groups: p.supplemental_groups.clone().unwrap_or_default(),
        unsupported: Vec::new(),
    };
    if let Some(g) = p.fs_group {
        e.groups.push(g);
    }
    let mut no = |set: bool, what: &str| {
        if set {
            e.unsupported.push(what.to_string());
        }
    };
    no(
        s.se_linux_options.is_some(),
        &format!("{field}.securityContext.seLinuxOptions"),
    );
    no(
        p.se_linux_options.is_some(),
        "spec.securityContext.seLinuxOptions",
    );
    no(
        s.app_armor_profile.is_some() || p.app_armor_profile.is_some(),
        &format!("{field}.securityContext.appArmorProfile"),
    );
    no(
        s.proc_mount.as_deref().is_some_and(|m| m != "Default"),
        &format!("{field}.securityContext.procMount"),
    );
    no(
        s.windows_options.is_some() || p.windows_options.is_some(),
        &format!("{field}.securityContext.windowsOptions"),
    );
    no(
        p.sysctls.as_ref().is_some_and(|s| !s.is_empty()),
        "spec.securityContext.sysctls",
    );
    e
}

fn needs_podman(what: &str) -> String {
    format!("{what}: a host process cannot honour it; run local mode with --runtime podman")
}

/// The `setpriv` prefix that runs a host process as `e` says (empty: nothing to change), given
/// the uid `ebb` runs as; or why it cannot.
pub fn process_wrapper(
    e: &Effective,
    c: &Container,
    uid: u32,
    field: &str,
) -> Result<Vec<String>, String> {
    if let Some(what) = e.unsupported.first() {
        return Err(needs_podman(what));
    }
    let sc = format!("{field}.securityContext");
    if e.privileged {
        return Err(needs_podman(&format!("{sc}.privileged")));
    }
    if e.read_only_root {
        return Err(needs_podman(&format!("{sc}.readOnlyRootFilesystem")));
    }
    if !e.caps_add.is_empty() {
        return Err(needs_podman(&format!("{sc}.capabilities.add")));
    }
    if e.seccomp.as_deref().is_some_and(|s| s != "Unconfined") {
        return Err(needs_podman(&format!("{sc}.seccompProfile")));
    }
    if let Some(r) = c
        .resources
        .as_ref()
        .and_then(|r| r.limits.as_ref())
        .filter(|l| !l.is_empty())
    {
        let names: Vec<&String> = r.keys().collect();
        return Err(needs_podman(&format!(
            "{field}.resources.limits ({names:?}: cgroup limits)"
        )));
    }
    let mut w = Vec::new();
    let target_uid = e.run_as_user.unwrap_or(i64::from(uid));
    if e.run_as_non_root && target_uid == 0 {
        return Err(format!(
            "{sc}.runAsNonRoot: the container would run as root (uid 0); set runAsUser"
        ));
    }
    if e.run_as_user.is_some() || e.run_as_group.is_some() || !e.groups.is_empty() {
        if uid != 0
            && (target_uid != i64::from(uid) || e.run_as_group.is_some() || !e.groups.is_empty())
        {
            return Err(format!(
                "{sc}.runAsUser/runAsGroup: switching users needs ebb to run as root (it runs as uid {uid}), or --runtime podman"
            ));
        }
        if uid == 0 {
            w.extend(["--reuid".to_string(), target_uid.to_string()]);
            w.extend([
                "--regid".to_string(),
                e.run_as_group.unwrap_or(target_uid).to_string(),
            ]);
            if e.groups.is_empty() {
                w.push("--clear-groups".into());
            } else {
                let g: Vec<String> = e.groups.iter().map(ToString::to_string).collect();
                w.extend(["--groups".to_string(), g.join(",")]);
            }
        }
    }
    if !e.caps_drop.is_empty() {
        // A process that stays root keeps its effective capabilities whatever the bounding
        // set says: only a non-root process loses them for good.
        if target_uid == 0 {
            return Err(needs_podman(&format!(
                "{sc}.capabilities.drop (for a process running as root)"
            )));
        }
        let all = e.caps_drop.iter().any(|c| c.eq_ignore_ascii_case("ALL"));
        let set = if all {
            "-all".to_string()
        } else {
            e.caps_drop
                .iter()
                .map(|c| format!("-{}", c.to_ascii_lowercase().trim_start_matches("cap_")))
                .collect::<Vec<_>>()
                .join(",")
        };
        w.extend([
            "--bounding-set".to_string(),
            set.clone(),
            "--inh-caps".to_string(),
            set,
        ]);
    }
    if e.no_new_privileges {
        w.push("--no-new-privs".into());
    }
    if w.is_empty() {
        return Ok(w);
    }
    let mut out = vec!["setpriv".to_string()];
    out.extend(w);
    out.push("--".into());
    Ok(out)
}

/// Requests are what a scheduler places by; one machine places a pod only if they fit it.
pub fn fits(c: &Container, field: &str) -> Result<(), String> {
    let Some(req) = c.resources.as_ref().and_then(|r| r.requests.as_ref()) else {
        return Ok(());
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<f64>().ok())
        })
        .map_or(f64::MAX, |k| k * 1024.0);
    for (name, have) in [("cpu", cores), ("memory", memory)] {
        if let Some(q) = req.get(name).and_then(|q| quantity(&q.0))
            && q > have
        {
            return Err(format!(
                "{field}.resources.requests.{name}: {} is more than this machine has ({have}): Unschedulable",
                req[name].0
            ));
        }
    }
    Ok(())
}

/// podman's flags for `e` and the container's resources.
pub fn podman_args(e: &Effective, c: &Container, field: &str) -> Result<Vec<String>, String> {
    if let Some(what) = e.unsupported.first() {
        return Err(format!("{what}: not supported in local mode"));
    }
    let sc = format!("{field}.securityContext");
    let mut a = Vec::new();
    match (e.run_as_user, e.run_as_group) {
        (Some(u), Some(g)) => a.extend(["--user".to_string(), format!("{u}:{g}")]),
        (Some(u), None) => a.extend(["--user".to_string(), u.to_string()]),
        (None, Some(_)) => {
            return Err(format!(
                "{sc}.runAsGroup: set runAsUser with it (podman takes a group only with a user)"
            ));
        }
        (None, None) => {}
    }
    if e.run_as_non_root && e.run_as_user == Some(0) {
        return Err(format!("{sc}.runAsNonRoot: runAsUser is 0"));
    }
    for g in &e.groups {
        a.extend(["--group-add".to_string(), g.to_string()]);
    }
    if e.read_only_root {
        a.push("--read-only".into());
    }
    if e.privileged {
        a.push("--privileged".into());
    }
    for c in &e.caps_drop {
        a.extend(["--cap-drop".to_string(), c.clone()]);
    }
    for c in &e.caps_add {
        a.extend(["--cap-add".to_string(), c.clone()]);
    }
    if e.no_new_privileges {
        a.extend([
            "--security-opt".to_string(),
            "no-new-privileges".to_string(),
        ]);
    }
    match e.seccomp.as_deref() {
        None | Some("RuntimeDefault") => {}
        Some("Unconfined") => a.extend([
            "--security-opt".to_string(),
            "seccomp=unconfined".to_string(),
        ]),
        Some(other) => {
            return Err(format!(
                "{sc}.seccompProfile.type: {other:?} profiles need a node's profile directory; use RuntimeDefault or Unconfined"
            ));
        }
    }
    let r = c.resources.as_ref();
    let get = |m: Option<
        &std::collections::BTreeMap<
            String,
            k8s_openapi::apimachinery::pkg::api::resource::Quantity,
        >,
    >,
               k: &str| {
        m.and_then(|m| m.get(k)).map(|q| {
            quantity(&q.0).ok_or_else(|| format!("{field}.resources: {:?} is not a quantity", q.0))
        })
    };
    if let Some(cpu) = get(r.and_then(|r| r.limits.as_ref()), "cpu") {
        a.extend(["--cpus".to_string(), format!("{}", cpu?)]);
    }
    if let Some(mem) = get(r.and_then(|r| r.limits.as_ref()), "memory") {
        a.extend(["--memory".to_string(), format!("{}", mem? as u64)]);
    }
    if let Some(cpu) = get(r.and_then(|r| r.requests.as_ref()), "cpu") {
        // Kubernetes' shares: 1024 per requested core.
        a.extend([
            "--cpu-shares".to_string(),
            format!("{}", ((cpu? * 1024.0) as u64).max(2)),
        ]);
    }
    if let Some(mem) = get(r.and_then(|r| r.requests.as_ref()), "memory") {
        a.extend([
            "--memory-reservation".to_string(),
            format!("{}", mem? as u64),
        ]);
    }
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod_and_container(pod: serde_json::Value, c: serde_json::Value) -> (PodSpec, Container) {
        (
            serde_json::from_value(pod).unwrap_or_default(),
            serde_json::from_value(c).unwrap_or_default(),
        )
    }

    #[test]
    fn podman_flags() {
        let (p, c) = pod_and_container(
            json!({"containers": [], "securityContext": {"runAsUser": 1000, "fsGroup": 2000}}),
            json!({"name": "a", "securityContext": {"runAsGroup": 3000, "readOnlyRootFilesystem": true, "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}},
                   "resources": {"limits": {"cpu": "1", "memory": "128Mi"}, "requests": {"cpu": "125m"}}}),
        );
        let e = effective(&p, &c, "spec.containers[0]");
        let args = podman_args(&e, &c, "spec.containers[0]")
            .unwrap_or_default()
            .join(" ");
        assert_eq!(
            args,
            "--user 1000:3000 --group-add 2000 --read-only --cap-drop ALL --security-opt no-new-privileges --cpus 1 --memory 134217728 --cpu-shares 128"
        );
    }

    #[test]
    fn host_processes_use_setpriv_or_say_why_not() {
        let (p, c) = pod_and_container(
            json!({"containers": []}),
            json!({"name": "a", "securityContext": {"runAsUser": 1000, "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}}),
        );
        let e = effective(&p, &c, "spec.containers[0]");
        assert_eq!(
            process_wrapper(&e, &c, 0, "spec.containers[0]")
                .unwrap_or_default()
                .join(" "),
            "setpriv --reuid 1000 --regid 1000 --clear-groups --bounding-set -all --inh-caps -all --no-new-privs --"
        );
        assert!(
            process_wrapper(&e, &c, 500, "spec.containers[0]")
                .is_err_and(|m| m.contains("needs ebb to run as root"))
        );
        for (sc, field) in [
            (
                json!({"readOnlyRootFilesystem": true}),
                "readOnlyRootFilesystem",
            ),
            (
                json!({"capabilities": {"add": ["NET_ADMIN"]}}),
                "capabilities.add",
            ),
            (json!({"runAsNonRoot": true}), "runAsNonRoot"),
            (json!({"seLinuxOptions": {"level": "s0"}}), "seLinuxOptions"),
        ] {
            let (p, c) = pod_and_container(
                json!({"containers": []}),
                json!({"name": "a", "securityContext": sc}),
            );
            let e = effective(&p, &c, "spec.containers[0]");
            assert!(
                process_wrapper(&e, &c, 0, "spec.containers[0]").is_err_and(|m| m.contains(field)),
                "{field}"
            );
        }
        let (p, c) = pod_and_container(
            json!({"containers": []}),
            json!({"name": "a", "resources": {"limits": {"memory": "1Gi"}}}),
        );
        let e = effective(&p, &c, "spec.containers[0]");
        assert!(
            process_wrapper(&e, &c, 0, "spec.containers[0]")
                .is_err_and(|m| m.contains("resources.limits") && m.contains("--runtime podman"))
        );
        let (_, c) = pod_and_container(
            json!({"containers": []}),
            json!({"name": "a", "resources": {"requests": {"cpu": "10000"}}}),
        );
        assert!(fits(&c, "spec.containers[0]").is_err_and(|m| m.contains("Unschedulable")));
    }
}
