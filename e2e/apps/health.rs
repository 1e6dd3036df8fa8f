//! An app whose health the test controls with files: `/healthz` fails (503) while
//! `$SICK_FILE` exists, `/livez` fails (500) while `$DEAD_FILE` exists; `/` answers with the
//! process id, so a test sees a restart.

mod common;

fn exists(var: &str) -> bool {
    std::env::var(var).is_ok_and(|p| !p.is_empty() && std::path::Path::new(&p).exists())
}

fn main() {
    common::serve("health", move |req| async move {
        match req.uri().path() {
            "/healthz" if exists("SICK_FILE") => common::text(503, "sick\n"),
            "/livez" if exists("DEAD_FILE") => common::text(500, "dead\n"),
            "/healthz" | "/livez" => common::text(200, "ok\n"),
            _ => common::text(200, format!("pid {}\n", std::process::id())),
        }
    });
}
