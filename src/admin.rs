//! The admin listener: `/metrics`, `/healthz`, `/readyz`, `/config`.

use crate::error::{ErrorCode, ProxyError};
use crate::state::State;
use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use std::sync::Arc;

pub struct Admin {
    state: Arc<State>,
}

impl Admin {
    pub fn new(state: Arc<State>) -> Self {
        Admin { state }
    }
}

fn reply(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    let len = r.body().len();
    r.headers_mut()
        .insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(len));
    r
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        if req.method != http::Method::GET && req.method != http::Method::HEAD {
            let e = ProxyError::new(
                ErrorCode::MethodNotAllowed,
                "the admin endpoints answer GET and HEAD only",
            );
            let mut r = reply(
                StatusCode::METHOD_NOT_ALLOWED,
                "application/json",
                e.body().to_vec(),
            );
            r.headers_mut().insert(
                http::header::ALLOW,
                http::HeaderValue::from_static("GET, HEAD"),
            );
            return r;
        }
        let path = req.uri.path().to_string();
        match path.as_str() {
            "/metrics" => {
                let used = self.state.body_memory_used();
                self.state.metrics.body_memory.set(used as i64);
                let health = &self.state.metrics.routing.target_health;
                for (model, h) in self.state.observed.targets.snapshot() {
                    health.with_label_values(&[&*model]).set(h.gauge());
                }
                reply(
                    StatusCode::OK,
                    "text/plain; version=0.0.4",
                    self.state.metrics.render(),
                )
            }
            "/healthz" => reply(StatusCode::OK, "text/plain", b"ok\n".to_vec()),
            "/readyz" => {
                if self.state.is_ready() {
                    reply(StatusCode::OK, "text/plain", b"ready\n".to_vec())
                } else {
                    reply(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "text/plain",
                        b"not ready\n".to_vec(),
                    )
                }
            }
            "/config" => {
                let policy = self.state.policy.load();
                let body = serde_json::json!({
                    "generation": policy.generation,
                    "path": self.state.config_path.display().to_string(),
                    "policy": policy.redacted,
                });
                let text = serde_json::to_vec_pretty(&body).unwrap_or_default();
                reply(StatusCode::OK, "application/json", text)
            }
            _ => reply(StatusCode::NOT_FOUND, "text/plain", b"not found\n".to_vec()),
        }
    }
}
