//! The demo app and the browser SDK, embedded in the binary.

use axum::extract::Path;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

/// `(directory, file name, content)` of every embedded file.
const FILES: &[(&str, &str, &str)] = &[
    (
        "app",
        "index.html",
        include_str!("../../../web/app/index.html"),
    ),
    ("app", "app.js", include_str!("../../../web/app/app.js")),
    ("app", "app.css", include_str!("../../../web/app/app.css")),
    (
        "sdk",
        "switchboard.js",
        include_str!("../../../web/sdk/switchboard.js"),
    ),
    (
        "sdk",
        "switchboard.d.ts",
        include_str!("../../../web/sdk/switchboard.d.ts"),
    ),
];

fn content_type(name: &str) -> &'static str {
    match name.rsplit('.').next() {
        Some("html") => "text/html; charset=utf-8",
        Some("js") | Some("mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("ts") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

fn file(dir: &str, name: &str) -> Response {
    match FILES.iter().find(|(d, n, _)| *d == dir && *n == name) {
        Some((_, n, body)) => (
            [
                (header::CONTENT_TYPE, content_type(n)),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            *body,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "not found").into_response(),
    }
}

/// `GET /` and `GET /room/{name}`: the app's page.
pub async fn index() -> Response {
    file("app", "index.html")
}

/// `GET /room/{name}`.
pub async fn room(Path(_name): Path<String>) -> Response {
    file("app", "index.html")
}

/// `GET /app/{file}`.
pub async fn app_file(Path(name): Path<String>) -> Response {
    file("app", &name)
}

/// `GET /sdk/{file}`.
pub async fn sdk_file(Path(name): Path<String>) -> Response {
    file("sdk", &name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn javascript_is_served_as_javascript() {
        let r = file("sdk", "switchboard.js");
        assert_eq!(r.status(), StatusCode::OK);
        assert!(r.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/javascript"));
        assert_eq!(file("sdk", "../Cargo.toml").status(), StatusCode::NOT_FOUND);
    }
}
