//! The podman runtime: a local image runs as the instance, a missing image fails the revision
//! naming it, and no container outlives `ebb`. Skipped with a message when podman is not
//! installed, unless EBB_REQUIRE_PODMAN=1 (CI), where a missing podman fails.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on broken fixtures

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

fn podman_works() -> bool {
    Command::new("podman")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// An image holding the hello app and the shared libraries it links (no registry is reachable:
/// the image is imported from a root filesystem built here).
fn import_hello_image(tag: &str, dir: &Path) {
    let hello = Path::new(env!("CARGO_BIN_EXE_hello"));
    let rootfs = dir.join("rootfs");
    std::fs::create_dir_all(&rootfs).unwrap();
    std::fs::copy(hello, rootfs.join("hello")).unwrap();
    let ldd = Command::new("ldd").arg(hello).output().unwrap();
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        let path = line
            .split("=>")
            .last()
            .and_then(|p| p.split_whitespace().next())
            .filter(|p| p.starts_with('/'));
        if let Some(p) = path {
            let dest = rootfs.join(p.trim_start_matches('/'));
            std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
            std::fs::copy(p, &dest).unwrap();
        }
    }
    let tar = dir.join("rootfs.tar");
    let ok = Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .unwrap();
    assert!(ok.success());
    let out = Command::new("podman")
        .args(["import", "--change", "ENTRYPOINT [\"/hello\"]"])
        .arg(&tar)
        .arg(tag)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "podman import: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn ebb_containers() -> Vec<String> {
    let out = Command::new("podman")
        .args(["ps", "-aq", "--filter", "label=dev.ebb.instance"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

#[test]
#[ignore = "needs podman: scripts/test.sh runs it (--run-ignored) where podman works"]
fn podman_runtime_runs_local_images_and_names_missing_ones() {
    assert!(podman_works(), "podman is not installed (or does not run)");
    let dir = std::env::temp_dir().join(format!("ebb-podman-{}", std::process::id()));
    let tag = format!("localhost/ebb-e2e/hello:{}", std::process::id());
    import_hello_image(&tag, &dir);

    let mut ebb = Ebb::start_with(&["--runtime", "podman"]);
    let status = ebb.ok(&["local", "status"]);
    assert!(status.contains("runtime:  podman"), "{status}");
    ebb.ok(&[
        "service",
        "create",
        "boxed",
        "--image",
        &tag,
        "--env",
        "TARGET=podman",
    ]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (code, body) = rt.block_on(request(
        &http_client(),
        ebb.gateway,
        &ebb.host("boxed"),
        "/",
    ));
    assert_eq!(
        (code, body.as_str()),
        (200, "Hello podman! (boxed-00001)\n")
    );
    assert_eq!(ebb_containers().len(), 1, "one container runs the instance");

    let out = ebb.cli(&[
        "service",
        "create",
        "absent",
        "--image",
        "localhost/ebb-e2e/absent:1",
        "--wait-timeout",
        "30s",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ErrImagePull") && err.contains("localhost/ebb-e2e/absent:1"),
        "{err}"
    );

    ebb.stop();
    assert!(ebb_containers().is_empty(), "no container outlives ebb");

    // Killed, ebb can stop nothing itself: its reaper removes the container.
    ebb.launch();
    let (code, _) = rt.block_on(request(
        &http_client(),
        ebb.gateway,
        &ebb.host("boxed"),
        "/",
    ));
    assert_eq!(code, 200);
    assert_eq!(ebb_containers().len(), 1);
    ebb.kill();
    wait_until(
        "the container of a killed ebb removed",
        std::time::Duration::from_secs(30),
        || ebb_containers().is_empty(),
    );
    let _ = Command::new("podman").args(["rmi", "-f", &tag]).output();
    let _ = std::fs::remove_dir_all(&dir);
}
