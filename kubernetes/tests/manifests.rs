//! The install manifests in `config/`: valid for Kubernetes (`kubernetes-validate --strict`),
//! every container locked down, every ServiceAccount present, and the names the binaries
//! assume (activator internal Service, autoscaler Service) really exist.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on broken fixtures

use std::path::{Path, PathBuf};

use serde_json::Value;

fn config_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../config")
}

fn manifest_files() -> Vec<PathBuf> {
    let mut files = vec![config_dir().join("100-namespace.yaml")];
    for sub in ["rbac", "components", "core"] {
        let mut more: Vec<PathBuf> = std::fs::read_dir(config_dir().join(sub))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
            .collect();
        more.sort();
        files.extend(more);
    }
    files
}

fn objects() -> Vec<Value> {
    manifest_files()
        .iter()
        .flat_map(|f| {
            serde_saphyr::from_multiple::<Value>(&std::fs::read_to_string(f).unwrap()).unwrap()
        })
        .filter(|v| !v.is_null())
        .collect()
}

#[test]
fn manifests_pass_kubernetes_validate() {
    let run = std::process::Command::new("kubernetes-validate")
        .arg("--strict")
        .arg("--quiet")
        .args(manifest_files())
        .output();
    match run {
        Ok(o) => assert!(
            o.status.success(),
            "kubernetes-validate refused a manifest:\n{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) if std::env::var_os("EBB_REQUIRE_KUBE_VALIDATE").is_some() => {
            panic!("kubernetes-validate is required (pip install kubernetes-validate): {e}")
        }
        Err(e) => eprintln!("SKIPPED kubernetes-validate check: {e} (scripts/test.sh requires it)"),
    }
}

#[test]
fn every_component_is_locked_down_and_has_its_account_and_budget() {
    let objs = objects();
    let of_kind = |k: &'static str| objs.iter().filter(move |o| o["kind"] == k);
    let accounts: Vec<&str> = of_kind("ServiceAccount")
        .map(|o| o["metadata"]["name"].as_str().unwrap())
        .collect();
    let budgets: Vec<&str> = of_kind("PodDisruptionBudget")
        .map(|o| o["metadata"]["name"].as_str().unwrap())
        .collect();
    let deployments: Vec<&Value> = of_kind("Deployment").collect();
    assert_eq!(
        deployments.len(),
        4,
        "controller, autoscaler, activator, webhook"
    );
    for d in deployments {
        let name = d["metadata"]["name"].as_str().unwrap();
        let pod = &d["spec"]["template"]["spec"];
        assert!(
            accounts.contains(&pod["serviceAccountName"].as_str().unwrap()),
            "{name}: account"
        );
        assert!(budgets.contains(&name), "{name}: PodDisruptionBudget");
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{name}");
        for c in pod["containers"].as_array().unwrap() {
            let sc = &c["securityContext"];
            assert_eq!(sc["allowPrivilegeEscalation"], false, "{name}");
            assert_eq!(sc["readOnlyRootFilesystem"], true, "{name}");
            assert_eq!(sc["capabilities"]["drop"][0], "ALL", "{name}");
            assert!(
                !c["readinessProbe"].is_null() && !c["livenessProbe"].is_null(),
                "{name}: probes"
            );
            assert!(!c["resources"]["requests"].is_null(), "{name}: requests");
        }
    }
    let services: Vec<&str> = of_kind("Service")
        .map(|o| o["metadata"]["name"].as_str().unwrap())
        .collect();
    // ebb-controller's default EBB_ACTIVATOR_HOST and ebb-activator's EBB_AUTOSCALER_SERVICE.
    assert!(services.contains(&"ebb-activator-internal") && services.contains(&"ebb-autoscaler"));
    // ebb-controller's default EBB_ACTIVATOR_PROBE_SERVICE: headless, one endpoint per
    // activator, at the port the activator answers `/v1/routes/...` on.
    let probe = of_kind("Service")
        .find(|o| o["metadata"]["name"] == "ebb-activator-probe")
        .expect("ebb-activator-probe");
    assert_eq!(probe["spec"]["clusterIP"], "None");
    assert_eq!(probe["spec"]["ports"][0]["targetPort"], "metrics");
}

/// The webhook configurations call the webhook's Service on the paths it serves, with the
/// names its code patches, fail closed and declare no side effects; their bundle is left to
/// the webhook.
#[test]
fn webhook_configurations_match_the_webhook() {
    use ebb_kubernetes::webhook::{MUTATING, VALIDATING};
    let objs = objects();
    let svc = objs
        .iter()
        .find(|o| o["kind"] == "Service" && o["metadata"]["name"] == "ebb-webhook")
        .expect("the ebb-webhook Service");
    assert_eq!(svc["spec"]["ports"][0]["port"], 443);
    for (kind, name, path) in [
        ("MutatingWebhookConfiguration", MUTATING, "/defaulting"),
        ("ValidatingWebhookConfiguration", VALIDATING, "/validation"),
    ] {
        let c = objs
            .iter()
            .find(|o| o["kind"] == kind)
            .unwrap_or_else(|| panic!("{kind}"));
        assert_eq!(c["metadata"]["name"], name);
        for w in c["webhooks"].as_array().unwrap() {
            let s = &w["clientConfig"]["service"];
            assert_eq!(
                (
                    s["name"].as_str(),
                    s["namespace"].as_str(),
                    s["path"].as_str()
                ),
                (Some("ebb-webhook"), Some("ebb-system"), Some(path)),
                "{kind}"
            );
            assert_eq!(w["failurePolicy"], "Fail", "{kind}");
            assert_eq!(w["sideEffects"], "None", "{kind}");
            assert!(
                w["clientConfig"]["caBundle"].is_null(),
                "{kind}: the webhook sets it"
            );
            let resources: Vec<&str> = w["rules"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|r| {
                    r["resources"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|x| x.as_str().unwrap())
                })
                .collect();
            for r in [
                "services",
                "configurations",
                "routes",
                "revisions",
                "domainmappings",
                "clusterdomainclaims",
            ] {
                assert!(resources.contains(&r), "{kind}: {r}");
            }
        }
    }
}
