//! Realistic manifests: every example round-trips through the types unchanged and validates;
//! every invalid fixture yields exactly the errors its `# expect:` lines list, all at once.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on broken fixtures

use std::path::{Path, PathBuf};

use serving_api::Service;
use serving_api::defaults::default_service;
use serving_api::validation::{ValidationConfig, validate_service};

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no fixtures in {}", dir.display());
    files
}

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

/// `out` holds everything `input` had, unchanged; the only additions are zero values of fields
/// that Kubernetes' Go types serialize unconditionally (a container's `name: ""`, a probe's
/// `port: 0`), which mean "unset" to every reader.
fn same_modulo_zero_fields(input: &serde_json::Value, out: &serde_json::Value, at: &str) {
    use serde_json::Value;
    match (input, out) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                let got = b.get(k).unwrap_or_else(|| panic!("{at}: field {k} lost"));
                same_modulo_zero_fields(v, got, &format!("{at}.{k}"));
            }
            for (k, v) in b.iter().filter(|(k, _)| !a.contains_key(*k)) {
                let zero = matches!(v, Value::String(s) if s.is_empty()) || v == &Value::from(0);
                assert!(zero, "{at}: field {k} = {v} appeared");
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            assert_eq!(a.len(), b.len(), "{at}: length changed");
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                same_modulo_zero_fields(x, y, &format!("{at}[{i}]"));
            }
        }
        _ => assert_eq!(input, out, "{at} changed"),
    }
}

#[test]
fn examples_round_trip_and_validate() {
    for path in yaml_files(&examples_dir()) {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let raw: serde_json::Value =
            serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let svc: Service =
            serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let back = serde_json::to_value(&svc).unwrap_or_default();
        let again: Service = serde_json::from_value(back.clone())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(again, svc, "{} does not round-trip", path.display());
        same_modulo_zero_fields(&raw, &back, &path.display().to_string());

        let mut defaulted = svc.clone();
        default_service(&mut defaulted, &Default::default());
        if let Err(e) = validate_service(&defaulted, &ValidationConfig::default()) {
            panic!("{} should be valid:\n{e}", path.display());
        }
        // Defaulting is idempotent: a second pass changes nothing.
        let mut twice = defaulted.clone();
        default_service(&mut twice, &Default::default());
        assert_eq!(twice, defaulted, "{}", path.display());
    }
}

#[test]
fn invalid_fixtures_report_every_error() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/invalid");
    for path in yaml_files(&dir) {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let expected: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# expect: "))
            .collect();
        assert!(
            !expected.is_empty(),
            "{} lists no expectations",
            path.display()
        );
        let mut svc: Service =
            serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        default_service(&mut svc, &Default::default());
        let errors = match validate_service(&svc, &ValidationConfig::default()) {
            Ok(()) => panic!("{} validated but should not", path.display()),
            Err(e) => e.0.iter().map(ToString::to_string).collect::<Vec<_>>(),
        };
        for want in &expected {
            assert!(
                errors.iter().any(|got| got.contains(want)),
                "{}: missing error {want:?}\ngot:\n{}",
                path.display(),
                errors.join("\n")
            );
        }
        assert_eq!(
            errors.len(),
            expected.len(),
            "{}: unexpected extra errors:\n{}",
            path.display(),
            errors.join("\n")
        );
    }
}
