//! Errors the proxy itself answers with: OpenAI-shaped JSON so SDKs surface them,
//! each with a stable `code` that clients and dashboards can rely on.

use bytes::Bytes;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    InvalidRequest,
    ModelNotFound,
    HostNotAllowed,
    /// A missing or unknown virtual key where one is required.
    Unauthorized,
    /// The caller's key, team or org may not use the requested model.
    ModelNotAllowed,
    /// An `rpm` or `tpm` limit: try again after `Retry-After`.
    RateLimited,
    /// A budget with `on_exceed: reject` cannot cover the request's worst case.
    BudgetExceeded,
    /// Fleet-wide limits cannot be checked (Redis down) and `on_redis_down` is `closed`.
    GovernanceUnavailable,
    MethodNotAllowed,
    PayloadTooLarge,
    HeaderTooLarge,
    RequestTimeout,
    Overloaded,
    UpstreamUnavailable,
    UpstreamTimeout,
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::ModelNotFound => "model_not_found",
            ErrorCode::HostNotAllowed => "host_not_allowed",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::ModelNotAllowed => "model_not_allowed",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::BudgetExceeded => "budget_exceeded",
            ErrorCode::GovernanceUnavailable => "governance_unavailable",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::HeaderTooLarge => "header_too_large",
            ErrorCode::RequestTimeout => "request_timeout",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::UpstreamUnavailable => "upstream_unavailable",
            ErrorCode::UpstreamTimeout => "upstream_timeout",
            ErrorCode::Internal => "internal_error",
        }
    }

    pub fn status(self) -> u16 {
        match self {
            ErrorCode::InvalidRequest => 400,
            ErrorCode::ModelNotFound => 404,
            ErrorCode::HostNotAllowed => 403,
            ErrorCode::Unauthorized => 401,
            ErrorCode::ModelNotAllowed => 403,
            ErrorCode::RateLimited | ErrorCode::BudgetExceeded => 429,
            ErrorCode::GovernanceUnavailable => 503,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::HeaderTooLarge => 431,
            ErrorCode::RequestTimeout => 408,
            ErrorCode::Overloaded => 503,
            ErrorCode::UpstreamUnavailable => 502,
            ErrorCode::UpstreamTimeout => 504,
            ErrorCode::Internal => 500,
        }
    }

    /// OpenAI's `type` field for the code.
    fn kind(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest
            | ErrorCode::ModelNotFound
            | ErrorCode::MethodNotAllowed
            | ErrorCode::PayloadTooLarge
            | ErrorCode::HeaderTooLarge
            | ErrorCode::RequestTimeout => "invalid_request_error",
            ErrorCode::HostNotAllowed | ErrorCode::ModelNotAllowed => "permission_error",
            ErrorCode::Unauthorized => "authentication_error",
            ErrorCode::RateLimited => "rate_limit_error",
            ErrorCode::BudgetExceeded => "insufficient_quota",
            ErrorCode::Overloaded
            | ErrorCode::GovernanceUnavailable
            | ErrorCode::UpstreamUnavailable
            | ErrorCode::UpstreamTimeout
            | ErrorCode::Internal => "api_error",
        }
    }
}

#[derive(Debug, Clone)]
pub struct ProxyError {
    pub code: ErrorCode,
    pub message: String,
    /// Seconds for a `Retry-After` header (rate limits, budgets, overload).
    pub retry_after: Option<u64>,
}

/// The longest message an error carries: whatever a client value it echoes, the answer
/// (and any log line) stays small.
const MAX_MESSAGE: usize = 512;
/// The longest client value (a model name, a host, a path) echoed inside a message.
const MAX_ECHO: usize = 80;

/// `s` cut to at most `max` bytes on a character boundary, marked when cut.
fn cut(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

/// A client-supplied value, shortened for echoing in an error message.
pub fn clip(value: &str) -> String {
    cut(value.to_string(), MAX_ECHO)
}

impl ProxyError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ProxyError {
            code,
            message: cut(message.into(), MAX_MESSAGE),
            retry_after: None,
        }
    }

    /// The same error, telling the client when to come back.
    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    pub fn status(&self) -> u16 {
        self.code.status()
    }

    /// The error in Anthropic's shape, for clients of `/v1/messages` (the stable code kept).
    pub fn anthropic_body(&self) -> Bytes {
        let kind = match self.code {
            ErrorCode::InvalidRequest
            | ErrorCode::MethodNotAllowed
            | ErrorCode::HeaderTooLarge
            | ErrorCode::RequestTimeout => "invalid_request_error",
            ErrorCode::ModelNotFound => "not_found_error",
            ErrorCode::HostNotAllowed | ErrorCode::ModelNotAllowed => "permission_error",
            ErrorCode::Unauthorized => "authentication_error",
            ErrorCode::RateLimited | ErrorCode::BudgetExceeded => "rate_limit_error",
            ErrorCode::PayloadTooLarge => "request_too_large",
            ErrorCode::Overloaded | ErrorCode::GovernanceUnavailable => "overloaded_error",
            ErrorCode::UpstreamUnavailable | ErrorCode::UpstreamTimeout | ErrorCode::Internal => {
                "api_error"
            }
        };
        let v = serde_json::json!({
            "type": "error",
            "error": { "type": kind, "message": self.message, "code": self.code.as_str() }
        });
        Bytes::from(v.to_string())
    }

    pub fn body(&self) -> Bytes {
        let v = serde_json::json!({
            "error": {
                "message": self.message,
                "type": self.code.kind(),
                "param": null,
                "code": self.code.as_str(),
            }
        });
        Bytes::from(v.to_string())
    }
}

impl std::fmt::Display for ProxyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echoed_values_are_short() {
        let long = "é".repeat(600_000);
        assert!(clip(&long).len() <= MAX_ECHO + "…".len());
        let e = ProxyError::new(ErrorCode::ModelNotFound, long);
        assert!(e.message.len() <= MAX_MESSAGE + "…".len());
        assert!(e.message.ends_with('…'));
        assert_eq!(clip("gpt-4o"), "gpt-4o");
    }

    #[test]
    fn openai_shape() {
        let e = ProxyError::new(ErrorCode::HostNotAllowed, "host \"x\" is not allowed");
        assert_eq!(e.status(), 403);
        let v: serde_json::Value = serde_json::from_slice(&e.body()).unwrap();
        assert_eq!(v["error"]["code"], "host_not_allowed");
        assert_eq!(v["error"]["type"], "permission_error");
        assert_eq!(v["error"]["message"], "host \"x\" is not allowed");
    }
}
