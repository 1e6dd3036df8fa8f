//! Shows what the runtime gave the app: environment, request line and headers, the user it
//! runs as, and the files named in `$SHOW_FILES` (colon-separated paths: a file's content, a
//! directory's entries, or null when missing), and what a plain `GET /` answers at each
//! `host:port` in `$FETCH` (comma-separated: what the app's network namespace reaches), and the
//! runtime contract's facts (the `/dev` entries, `/tmp`'s mode and writability, whether
//! `/proc/sys` is mounted read-only, what stdin gave at start), as JSON.

mod common;

/// The real id from a `/proc/self/status` line (`Uid:`, `Gid:`).
fn status_field(name: &str) -> Option<u64> {
    std::fs::read_to_string("/proc/self/status")
        .ok()?
        .lines()
        .find(|l| l.starts_with(name))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn files() -> serde_json::Map<String, serde_json::Value> {
    std::env::var("SHOW_FILES")
        .unwrap_or_default()
        .split(':')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let path = std::path::Path::new(p);
            let v = if path.is_dir() {
                let mut names: Vec<String> = std::fs::read_dir(path)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect();
                names.sort();
                serde_json::json!(names)
            } else {
                std::fs::read_to_string(path)
                    .map_or(serde_json::Value::Null, serde_json::Value::from)
            };
            (p.to_string(), v)
        })
        .collect()
}

/// The body `GET /` answers at `addr` (HTTP/1.0, read to the end), or the error.
fn fetch(addr: &str) -> serde_json::Value {
    use std::io::{Read, Write};
    let answer = (|| -> std::io::Result<String> {
        let mut s = std::net::TcpStream::connect(addr)?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(2)))?;
        s.write_all(format!("GET / HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())?;
        let mut text = String::new();
        s.read_to_string(&mut text)?;
        Ok(text
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_string())
            .unwrap_or(text))
    })();
    answer.map_or_else(
        |e| serde_json::json!({ "error": e.to_string() }),
        Into::into,
    )
}

/// What reading stdin gave when the app started: "eof", "data" or the error.
static STDIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Knative's runtime contract, as this container sees it.
fn contract() -> serde_json::Value {
    use std::os::unix::fs::PermissionsExt;
    let dev: Vec<&str> = [
        "fd", "full", "null", "ptmx", "random", "stdin", "stdout", "stderr", "tty", "urandom",
        "zero", "console",
    ]
    .into_iter()
    .filter(|d| std::fs::symlink_metadata(format!("/dev/{d}")).is_ok())
    .collect();
    let tmp_mode = std::fs::metadata("/tmp")
        .map(|m| format!("{:o}", m.permissions().mode() & 0o7777))
        .unwrap_or_default();
    let probe = format!("/tmp/runtime-info-{}", std::process::id());
    let tmp_writable = std::fs::write(&probe, b"x").is_ok();
    let _ = std::fs::remove_file(&probe);
    let proc_sys_read_only = std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|f| f.get(1) == Some(&"/proc/sys"))
        .any(|f| f.get(3).is_some_and(|o| o.split(',').any(|o| o == "ro")));
    serde_json::json!({
        "dev": dev,
        "tmp_mode": tmp_mode,
        "tmp_writable": tmp_writable,
        "proc_sys_read_only": proc_sys_read_only,
        "stdin": STDIN.get().cloned().unwrap_or_else(|| "pending".into()),
    })
}

fn main() {
    // stdin once, off the serving path (a platform that left it open would block the read).
    std::thread::spawn(|| {
        use std::io::Read;
        let mut b = [0u8; 1];
        let _ = STDIN.set(match std::io::stdin().read(&mut b) {
            Ok(0) => "eof".into(),
            Ok(_) => "data".into(),
            Err(e) => e.to_string(),
        });
    });
    common::serve("runtime-info", |req| async move {
        let env: serde_json::Map<String, serde_json::Value> =
            std::env::vars().map(|(k, v)| (k, v.into())).collect();
        let headers: serde_json::Map<String, serde_json::Value> = req
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().into()))
            .collect();
        let info = serde_json::json!({
            "env": env,
            "request": {
                "method": req.method().as_str(),
                "uri": req.uri().to_string(),
                "version": format!("{:?}", req.version()),
                "headers": headers,
            },
            "pid": std::process::id(),
            "uid": status_field("Uid:"),
            "gid": status_field("Gid:"),
            "files": files(),
            "contract": contract(),
            "fetched": std::env::var("FETCH")
                .unwrap_or_default()
                .split(',')
                .filter(|a| !a.is_empty())
                .map(|a| (a.to_string(), fetch(a)))
                .collect::<serde_json::Map<_, _>>(),
            "cwd": std::env::current_dir().map(|d| d.display().to_string()).unwrap_or_default(),
        });
        let mut r = common::text(200, info.to_string());
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        r
    });
}
