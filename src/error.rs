//! Errors the proxy itself answers with: OpenAI-shaped JSON so SDKs surface them,
//! each with a stable `code` that clients and dashboards can rely on.

use bytes::Bytes;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    InvalidRequest,
    ModelNotFound,
    HostNotAllowed,
    MethodNotAllowed,
    PayloadTooLarge,
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
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::PayloadTooLarge => "payload_too_large",
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
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::PayloadTooLarge => 413,
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
            | ErrorCode::PayloadTooLarge => "invalid_request_error",
            ErrorCode::HostNotAllowed => "permission_error",
            ErrorCode::UpstreamUnavailable | ErrorCode::UpstreamTimeout | ErrorCode::Internal => {
                "api_error"
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct ProxyError {
    pub code: ErrorCode,
    pub message: String,
}

impl ProxyError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ProxyError {
            code,
            message: message.into(),
        }
    }

    pub fn status(&self) -> u16 {
        self.code.status()
    }

    /// The error in Anthropic's shape, for clients of `/v1/messages` (the stable code kept).
    pub fn anthropic_body(&self) -> Bytes {
        let kind = match self.code {
            ErrorCode::InvalidRequest | ErrorCode::MethodNotAllowed => "invalid_request_error",
            ErrorCode::ModelNotFound => "not_found_error",
            ErrorCode::HostNotAllowed => "permission_error",
            ErrorCode::PayloadTooLarge => "request_too_large",
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
    fn openai_shape() {
        let e = ProxyError::new(ErrorCode::HostNotAllowed, "host \"x\" is not allowed");
        assert_eq!(e.status(), 403);
        let v: serde_json::Value = serde_json::from_slice(&e.body()).unwrap();
        assert_eq!(v["error"]["code"], "host_not_allowed");
        assert_eq!(v["error"]["type"], "permission_error");
        assert_eq!(v["error"]["message"], "host \"x\" is not allowed");
    }
}
