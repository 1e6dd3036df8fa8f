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
    import_app_image(Path::new(env!("CARGO_BIN_EXE_hello")), "hello", tag, dir);
}

/// An image of one example app (`/NAME`, its entrypoint) and the shared libraries it links.
fn import_app_image(hello: &Path, name: &str, tag: &str, dir: &Path) {
    import_app_image_with(hello, name, tag, dir, &[]);
}

/// As `import_app_image`, with more Dockerfile instructions (`ENV K=V`).
fn import_app_image_with(hello: &Path, name: &str, tag: &str, dir: &Path, changes: &[&str]) {
    let rootfs = dir.join("rootfs");
    std::fs::create_dir_all(&rootfs).unwrap();
    std::fs::copy(hello, rootfs.join(name)).unwrap();
    std::fs::create_dir_all(rootfs.join("tmp")).unwrap();
    // As base images have it: world-writable and sticky (the runtime contract's /tmp).
    std::fs::set_permissions(
        rootfs.join("tmp"),
        std::os::unix::fs::PermissionsExt::from_mode(0o1777),
    )
    .unwrap();
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
    let mut import = Command::new("podman");
    import.args(["import", "--change", &format!("ENTRYPOINT [\"/{name}\"]")]);
    for change in changes {
        import.args(["--change", change]);
    }
    let out = import.arg(&tar).arg(tag).output().unwrap();
    assert!(
        out.status.success(),
        "podman import: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The containers of the `ebb` whose state directory is `state` (tests run side by side).
fn ebb_containers(state: &Path) -> Vec<String> {
    let out = Command::new("podman")
        .args(["ps", "-aq", "--filter"])
        .arg(format!("label=dev.ebb.state={}", state.display()))
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
    assert_eq!(
        ebb_containers(&ebb.state).len(),
        1,
        "one container runs the instance"
    );

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
    assert!(
        ebb_containers(&ebb.state).is_empty(),
        "no container outlives ebb"
    );

    // Killed, ebb can stop nothing itself: its reaper removes the container.
    ebb.launch();
    let (code, _) = rt.block_on(request(
        &http_client(),
        ebb.gateway,
        &ebb.host("boxed"),
        "/",
    ));
    assert_eq!(code, 200);
    assert_eq!(ebb_containers(&ebb.state).len(), 1);
    ebb.kill();
    wait_until(
        "the container of a killed ebb removed",
        std::time::Duration::from_secs(30),
        || ebb_containers(&ebb.state).is_empty(),
    );
    let _ = Command::new("podman").args(["rmi", "-f", &tag]).output();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Volumes as the kubelet mounts them: a ConfigMap's items at their paths and modes, a Secret
/// decoded, both read-only; an emptyDir per instance.
#[test]
#[ignore = "needs podman: scripts/test.sh runs it (--run-ignored) where podman works"]
fn podman_mounts_config_maps_secrets_and_empty_dirs() {
    assert!(podman_works(), "podman is not installed (or does not run)");
    let dir = std::env::temp_dir().join(format!("ebb-podman-vol-{}", std::process::id()));
    let tag = format!("localhost/ebb-e2e/runtime-info:{}", std::process::id());
    import_app_image(
        Path::new(env!("CARGO_BIN_EXE_runtime-info")),
        "runtime-info",
        &tag,
        &dir,
    );
    let ebb = Ebb::start_with(&["--runtime", "podman"]);
    let yaml = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  mode: fast\n  other: x\n---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: creds\nstringData:\n  password: s3cret\n---\napiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: vols\nspec:\n  template:\n    spec:\n      containers:\n        - image: {tag}\n          env:\n            - name: SHOW_FILES\n              value: /etc/conf/app/mode:/etc/conf:/etc/creds/password:/scratch\n          volumeMounts:\n            - {{name: conf, mountPath: /etc/conf, readOnly: true}}\n            - {{name: creds, mountPath: /etc/creds, readOnly: true}}\n            - {{name: scratch, mountPath: /scratch}}\n      volumes:\n        - name: conf\n          configMap:\n            name: settings\n            items: [{{key: mode, path: app/mode}}]\n        - name: creds\n          secret: {{secretName: creds}}\n        - name: scratch\n          emptyDir: {{}}\n"
    );
    ebb.apply(&yaml);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (code, body) = rt.block_on(request(&http_client(), ebb.gateway, &ebb.host("vols"), "/"));
    assert_eq!(code, 200, "{body}");
    let info: serde_json::Value = serde_json::from_str(&body).unwrap();
    let files = &info["files"];
    assert_eq!(files["/etc/conf/app/mode"], "fast", "{files}");
    assert_eq!(
        files["/etc/conf"],
        serde_json::json!(["app"]),
        "only the items asked for: {files}"
    );
    assert_eq!(files["/etc/creds/password"], "s3cret");
    assert_eq!(
        files["/scratch"],
        serde_json::json!([]),
        "an empty dir: {files}"
    );
    drop(ebb);
    let _ = Command::new("podman").args(["rmi", "-f", &tag]).output();
    let _ = std::fs::remove_dir_all(&dir);
}

/// securityContext and resources through podman: the user, a memory limit the container's
/// cgroup shows, a read-only root; runAsNonRoot with an image that runs as root is refused.
#[test]
#[ignore = "needs podman: scripts/test.sh runs it (--run-ignored) where podman works"]
fn podman_applies_security_context_and_limits() {
    assert!(podman_works(), "podman is not installed (or does not run)");
    let dir = std::env::temp_dir().join(format!("ebb-podman-sec-{}", std::process::id()));
    let tag = format!("localhost/ebb-e2e/runtime-info-sec:{}", std::process::id());
    import_app_image(
        Path::new(env!("CARGO_BIN_EXE_runtime-info")),
        "runtime-info",
        &tag,
        &dir,
    );
    let ebb = Ebb::start_with(&["--runtime", "podman"]);
    let limit_file = "/sys/fs/cgroup/memory/memory.limit_in_bytes:/sys/fs/cgroup/memory.max";
    let yaml = format!(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: sec\nspec:\n  template:\n    spec:\n      containers:\n        - image: {tag}\n          env:\n            - {{name: SHOW_FILES, value: \"{limit_file}\"}}\n          securityContext:\n            runAsUser: 1000\n            runAsGroup: 1000\n            readOnlyRootFilesystem: true\n            allowPrivilegeEscalation: false\n            capabilities: {{drop: [ALL]}}\n          resources:\n            limits: {{memory: 128Mi, cpu: \"1\"}}\n            requests: {{cpu: 125m}}\n"
    );
    ebb.apply(&yaml);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (code, body) = rt.block_on(request(&http_client(), ebb.gateway, &ebb.host("sec"), "/"));
    assert_eq!(code, 200, "{body}");
    let info: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (info["uid"].as_u64(), info["gid"].as_u64()),
        (Some(1000), Some(1000)),
        "{body}"
    );
    let limit = info["files"]
        .as_object()
        .unwrap()
        .values()
        .filter_map(|v| v.as_str())
        .map(str::trim)
        .find(|v| !v.is_empty())
        .unwrap_or_default()
        .to_string();
    assert_eq!(limit, "134217728", "the cgroup's memory limit: {body}");

    let root = format!(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: rooted\nspec:\n  template:\n    spec:\n      containers:\n        - image: {tag}\n          securityContext:\n            runAsNonRoot: true\n"
    );
    let out = ebb.cli_stdin(&["apply", "-f", "-", "--wait-timeout", "30s"], Some(&root));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("runAsNonRoot") && err.contains("root"),
        "{err}"
    );
    drop(ebb);
    let _ = Command::new("podman").args(["rmi", "-f", &tag]).output();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A registry on loopback (Debian's docker-registry) behind htpasswd basic auth, stopped on drop.
struct Registry {
    child: std::process::Child,
    addr: String,
}

impl Registry {
    fn start(dir: &Path, user: &str, password: &str) -> Registry {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        std::fs::create_dir_all(dir).unwrap();
        // bcrypt, the one hash the registry accepts, from libc's crypt through perl.
        let hash = Command::new("perl")
            .arg("-e")
            .arg("print crypt($ARGV[0], '$2b$05$' . $ARGV[1])")
            .arg(password)
            .arg("ebbe2esaltebbe2esaltee")
            .output()
            .unwrap();
        let hash = String::from_utf8_lossy(&hash.stdout).to_string();
        assert!(hash.starts_with("$2b$"), "bcrypt from crypt(3): {hash:?}");
        std::fs::write(dir.join("htpasswd"), format!("{user}:{hash}\n")).unwrap();
        let config = format!(
            "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {root}\nhttp:\n  addr: {addr}\nauth:\n  htpasswd:\n    realm: ebb-e2e\n    path: {htpasswd}\n",
            root = dir.join("data").display(),
            htpasswd = dir.join("htpasswd").display(),
        );
        std::fs::write(dir.join("config.yml"), config).unwrap();
        let log = std::fs::File::create(dir.join("registry.log")).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(dir.join("config.yml"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("docker-registry (Debian package docker-registry) runs");
        wait_until(
            "the registry listening",
            std::time::Duration::from_secs(20),
            || std::net::TcpStream::connect(&addr).is_ok(),
        );
        // Podman talks plain HTTP to it only when registries.conf says so.
        std::fs::write(
            dir.join("registries.conf"),
            format!("[[registry]]\nlocation = \"{addr}\"\ninsecure = true\n"),
        )
        .unwrap();
        Registry { child, addr }
    }

    fn push(&self, local: &str, remote: &str, creds: &str) {
        let out = Command::new("podman")
            .args([
                "push",
                "--tls-verify=false",
                "--creds",
                creds,
                local,
                remote,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "podman push {remote}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Images as the kubelet pulls them, from a registry that wants credentials: refused without
/// imagePullSecrets (the registry's answer named), pulled with them; the digest is pinned in
/// the revision's status and its instances keep running that image after the tag moves (even
/// when the local copy is gone), while a new revision resolves the tag again; imagePullPolicy
/// Never with an absent image fails naming the policy.
#[test]
#[ignore = "needs podman: scripts/test.sh runs it (--run-ignored) where podman works"]
fn podman_pulls_from_a_registry_and_pins_digests() {
    assert!(podman_works(), "podman is not installed (or does not run)");
    let pid = std::process::id();
    let dir = std::env::temp_dir().join(format!("ebb-podman-pull-{pid}"));
    let registry = Registry::start(&dir.join("registry"), "ebb", "s3cret");
    let hello = Path::new(env!("CARGO_BIN_EXE_hello"));
    let (one, two) = (
        format!("localhost/ebb-e2e/pull-one:{pid}"),
        format!("localhost/ebb-e2e/pull-two:{pid}"),
    );
    import_app_image_with(hello, "hello", &one, &dir, &["ENV TARGET=one"]);
    import_app_image_with(hello, "hello", &two, &dir, &["ENV TARGET=two"]);
    let remote = format!("{}/ebb-e2e/hello-{pid}:v1", registry.addr);
    let repository = format!("{}/ebb-e2e/hello-{pid}", registry.addr);
    registry.push(&one, &remote, "ebb:s3cret");

    let conf = dir.join("registry").join("registries.conf");
    let mut ebb = Ebb::start_full(
        &["--runtime", "podman"],
        &[("CONTAINERS_REGISTRIES_CONF", conf.to_str().unwrap())],
    );
    let out = ebb.cli(&[
        "service",
        "create",
        "nocreds",
        "--image",
        &remote,
        "--wait-timeout",
        "60s",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("ErrImagePull") || err.contains("ImagePullBackOff"),
        "{err}"
    );
    assert!(
        err.contains(&remote) && err.to_lowercase().contains("auth"),
        "the image and the registry's refusal named: {err}"
    );

    // username/password (the kubelet takes them as well as `auth`).
    let service = |env: &str| {
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: registry\ntype: kubernetes.io/dockerconfigjson\nstringData:\n  .dockerconfigjson: '{{\"auths\":{{\"{addr}\":{{\"username\":\"ebb\",\"password\":\"s3cret\"}}}}}}'\n---\napiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: pulled\nspec:\n  template:\n    spec:\n      imagePullSecrets: [{{name: registry}}]\n      containers:\n        - image: {remote}\n          env: [{{name: ROUND, value: \"{env}\"}}]\n",
            addr = registry.addr
        )
    };
    ebb.apply(&service("1"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let get = |ebb: &Ebb| {
        rt.block_on(request(
            &http_client(),
            ebb.gateway,
            &ebb.host("pulled"),
            "/",
        ))
    };
    assert_eq!(get(&ebb), (200, "Hello one! (pulled-00001)\n".to_string()));
    let first = ebb.get_json("revision", "pulled-00001");
    let digest = first["status"]["containerStatuses"][0]["imageDigest"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        digest.starts_with(&format!("{repository}@sha256:")),
        "the digest pinned in status.containerStatuses: {first}"
    );
    assert_eq!(
        first["status"]["containerStatuses"][0]["name"],
        "user-container"
    );

    // The tag moves and the local copy goes: the revision still runs the image it was made with.
    registry.push(&two, &remote, "ebb:s3cret");
    ebb.stop();
    for image in [remote.as_str(), digest.as_str()] {
        let _ = Command::new("podman").args(["rmi", "-f", image]).output();
    }
    ebb.launch();
    assert_eq!(
        get(&ebb),
        (200, "Hello one! (pulled-00001)\n".to_string()),
        "the pinned digest, pulled again"
    );
    // A new revision resolves the tag again.
    ebb.apply(&service("2"));
    assert_eq!(get(&ebb), (200, "Hello two! (pulled-00002)\n".to_string()));
    let second = ebb.get_json("revision", "pulled-00002");
    let digest2 = second["status"]["containerStatuses"][0]["imageDigest"]
        .as_str()
        .unwrap_or_default();
    assert!(
        digest2.starts_with(&format!("{repository}@sha256:")) && digest2 != digest,
        "{digest2} vs {digest}"
    );

    let never = format!(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: never\nspec:\n  template:\n    spec:\n      containers:\n        - image: {}/ebb-e2e/absent-{pid}:v1\n          imagePullPolicy: Never\n",
        registry.addr
    );
    let out = ebb.cli_stdin(&["apply", "-f", "-", "--wait-timeout", "30s"], Some(&never));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("ErrImageNeverPull") && err.contains("imagePullPolicy is Never"),
        "{err}"
    );

    ebb.stop();
    drop(registry);
    for image in [
        one.as_str(),
        two.as_str(),
        remote.as_str(),
        digest.as_str(),
        digest2,
    ] {
        let _ = Command::new("podman").args(["rmi", "-f", image]).output();
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Each podman instance has a network namespace of its own, as a pod has: the app listens on
/// its declared containerPort (Knative's `PORT`), so two instances of one revision both listen
/// on it without colliding, and a liveness probe on that port reaches it through its published
/// loopback port; the runtime contract holds (its /dev entries, /tmp, resolv.conf, read-only
/// /proc/sys, stdin at EOF).
#[test]
#[ignore = "needs podman: scripts/test.sh runs it (--run-ignored) where podman works"]
fn podman_instances_have_their_own_network_namespace() {
    assert!(podman_works(), "podman is not installed (or does not run)");
    let dir = std::env::temp_dir().join(format!("ebb-podman-net-{}", std::process::id()));
    let tag = format!("localhost/ebb-e2e/runtime-info-net:{}", std::process::id());
    import_app_image(
        Path::new(env!("CARGO_BIN_EXE_runtime-info")),
        "runtime-info",
        &tag,
        &dir,
    );
    let ebb = Ebb::start_with(&["--runtime", "podman"]);
    let yaml = format!(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: net\nspec:\n  template:\n    metadata:\n      annotations:\n        autoscaling.knative.dev/min-scale: \"2\"\n    spec:\n      containers:\n        - image: {tag}\n          ports: [{{containerPort: 8888}}]\n          env:\n            - {{name: SHOW_FILES, value: \"/etc/resolv.conf:/etc/hosts:/dev/null\"}}\n          livenessProbe:\n            tcpSocket: {{port: 8888}}\n            periodSeconds: 1\n"
    );
    ebb.apply(&yaml);
    wait_until(
        "two ready instances",
        std::time::Duration::from_secs(60),
        || ebb.ready_instances("net-00001") == 2,
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (code, body) = rt.block_on(request(&http_client(), ebb.gateway, &ebb.host("net"), "/"));
    assert_eq!(code, 200, "{body}");
    let info: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        info["env"]["PORT"], "8888",
        "PORT is the declared port: {body}"
    );
    for file in ["/etc/resolv.conf", "/etc/hosts", "/dev/null"] {
        assert!(info["files"][file].is_string(), "{file} present: {body}");
    }
    // Knative's runtime contract (TestMustHaveFiles, TestShouldHaveStdinEOF,
    // TestShouldHaveSysctlReadOnly).
    let contract = &info["contract"];
    assert_eq!(
        contract["dev"],
        serde_json::json!([
            "fd", "full", "null", "ptmx", "random", "stdin", "stdout", "stderr", "tty", "urandom",
            "zero"
        ]),
        "every /dev entry, no /dev/console: {contract}"
    );
    assert_eq!(contract["tmp_mode"], "1777", "{contract}");
    assert_eq!(contract["tmp_writable"], true, "{contract}");
    assert_eq!(contract["proc_sys_read_only"], true, "{contract}");
    assert_eq!(contract["stdin"], "eof", "{contract}");
    // Liveness keeps passing through the published port: no restart after a few periods.
    std::thread::sleep(std::time::Duration::from_secs(3));
    let revision = ebb.get_json("revision", "net-00001");
    let conditions = revision["status"]["conditions"].to_string();
    assert!(!conditions.contains("CrashLoopBackOff"), "{conditions}");
    assert_eq!(ebb.ready_instances("net-00001"), 2);
    drop(ebb);
    let _ = Command::new("podman").args(["rmi", "-f", &tag]).output();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Sidecars run as in a pod: in the serving container's network namespace (the serving
/// container reaches the sidecar on its loopback), pulled and pinned like it; a sidecar that
/// cannot run fails the revision with its exit, named.
#[test]
#[ignore = "needs podman: scripts/test.sh runs it (--run-ignored) where podman works"]
fn podman_runs_sidecars_in_the_instance_network() {
    assert!(podman_works(), "podman is not installed (or does not run)");
    let pid = std::process::id();
    let dir = std::env::temp_dir().join(format!("ebb-podman-side-{pid}"));
    let info = format!("localhost/ebb-e2e/runtime-info-side:{pid}");
    let hello = format!("localhost/ebb-e2e/hello-side:{pid}");
    import_app_image(
        Path::new(env!("CARGO_BIN_EXE_runtime-info")),
        "runtime-info",
        &info,
        &dir.join("info"),
    );
    import_app_image(
        Path::new(env!("CARGO_BIN_EXE_hello")),
        "hello",
        &hello,
        &dir.join("hello"),
    );
    let ebb = Ebb::start_with(&["--runtime", "podman"]);
    let svc = |name: &str, sidecar: &str| {
        format!(
            "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  template:\n    spec:\n      containers:\n        - image: {info}\n          ports: [{{containerPort: 8080}}]\n          env: [{{name: FETCH, value: \"127.0.0.1:9000\"}}]\n        - name: side\n          image: {hello}\n          env: [{{name: LISTEN_PORT, value: \"9000\"}}, {{name: TARGET, value: sidecar}}]\n{sidecar}"
        )
    };
    ebb.apply(&svc("pod", ""));
    let rt = tokio::runtime::Runtime::new().unwrap();
    // A sidecar without a readiness probe counts as ready once started (as in a pod), which
    // may be before it listens: asked again until it answers.
    let mut body = String::new();
    wait_until(
        "the sidecar reached",
        std::time::Duration::from_secs(20),
        || {
            let (code, b) =
                rt.block_on(request(&http_client(), ebb.gateway, &ebb.host("pod"), "/"));
            assert_eq!(code, 200, "{b}");
            body = b;
            !body.contains("\"error\"")
        },
    );
    let info_json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        info_json["fetched"]["127.0.0.1:9000"],
        format!("Hello sidecar! (pod-00001)\n"),
        "the sidecar answers on the serving container's loopback: {body}"
    );
    let containers = ebb_containers(&ebb.state);
    assert_eq!(containers.len(), 2, "the serving container and its sidecar");
    let revision = ebb.get_json("revision", "pod-00001");
    let status = &revision["status"];
    let names: Vec<&str> = status["containerStatuses"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    // Knative names unnamed containers of a multi-container pod user-container-{i}.
    assert_eq!(names, ["user-container-0", "side"], "{status}");

    let out = ebb.cli_stdin(
        &["apply", "-f", "-", "--wait-timeout", "30s"],
        Some(&svc(
            "broken",
            "          command: [\"/no-such-program\"]\n",
        )),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("\"side\"") && err.contains("ExitCode"),
        "{err}"
    );
    let mut ebb = ebb;
    ebb.stop();
    assert!(
        ebb_containers(&ebb.state).is_empty(),
        "no container outlives ebb, sidecars and the containers they shared included"
    );
    for image in [&info, &hello] {
        let _ = Command::new("podman").args(["rmi", "-f", image]).output();
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--runtime auto`, the default, picks podman where it works.
#[test]
#[ignore = "needs podman: scripts/test.sh runs it (--run-ignored) where podman works"]
fn auto_runtime_picks_podman_where_it_works() {
    assert!(podman_works(), "podman is not installed (or does not run)");
    let ebb = Ebb::start_with(&["--runtime", "auto"]);
    let status = ebb.ok(&["local", "status"]);
    assert!(status.contains("runtime:  podman"), "{status}");
}
