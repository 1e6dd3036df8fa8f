//! Shows what the runtime gave the app: environment, request line and headers, as JSON.

mod common;

fn main() {
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
