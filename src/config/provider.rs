//! Providers: base URLs, credential headers per wire format, TLS trust, and the host table
//! entries they own in forward-proxy mode.

use super::expand::{expand_secret, expand_vars, Env};
use super::{header_name, header_value, ConfigError, LATER_FORMATS};
use crate::policy::{Format, Provider};
use http::header::HeaderName;
use pingora::protocols::tls::CaType;
use pingora::tls::x509::X509;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

pub(super) fn compile_provider(
    name: &str,
    rp: &super::raw::RawProvider,
    env: &dyn Env,
    field: &str,
) -> Result<Provider, ConfigError> {
    let format = match rp.format.as_str() {
        "openai" => Format::OpenAi,
        "azure-openai" => Format::AzureOpenAi,
        "anthropic" => Format::Anthropic,
        "gemini" => Format::Gemini,
        f if LATER_FORMATS.contains(&f) => {
            return Err(ConfigError::new(
                format!("{field}.format"),
                format!("format {f:?} is not supported yet"),
            ))
        }
        f => {
            return Err(ConfigError::new(
                format!("{field}.format"),
                format!("unknown format {f:?} (openai, azure-openai, anthropic, gemini)"),
            ))
        }
    };
    let base_url = expand_vars(&rp.base_url, env)
        .map_err(|m| ConfigError::new(format!("{field}.base_url"), m))?;
    let (tls, host, port, base_path) =
        parse_base_url(&base_url).map_err(|m| ConfigError::new(format!("{field}.base_url"), m))?;
    let literal_addr = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .ok()
        .map(|ip| SocketAddr::new(ip, port));
    let default_port = if tls { 443 } else { 80 };
    let authority = if port == default_port {
        host.clone()
    } else {
        format!("{host}:{port}")
    };
    let auth = match &rp.api_key {
        None => None,
        Some(k) => {
            let key = expand_secret(k, env)
                .map_err(|m| ConfigError::new(format!("{field}.api_key"), m))?;
            if key.is_empty() {
                None
            } else {
                let f = format!("{field}.api_key");
                Some(match format {
                    Format::OpenAi => (
                        http::header::AUTHORIZATION,
                        header_value(&f, &format!("Bearer {key}"))?,
                    ),
                    Format::AzureOpenAi => {
                        (HeaderName::from_static("api-key"), header_value(&f, &key)?)
                    }
                    Format::Anthropic => (
                        HeaderName::from_static("x-api-key"),
                        header_value(&f, &key)?,
                    ),
                    Format::Gemini => (
                        HeaderName::from_static("x-goog-api-key"),
                        header_value(&f, &key)?,
                    ),
                })
            }
        }
    };
    let mut extra_headers = Vec::new();
    for (k, v) in &rp.headers {
        let f = format!("{field}.headers.{k}");
        let v = expand_secret(v, env).map_err(|m| ConfigError::new(&f, m))?;
        let name = header_name(&f, k)?;
        if PROXY_SET.contains(&name.as_str()) || auth.as_ref().is_some_and(|(a, _)| *a == name) {
            return Err(ConfigError::new(
                &f,
                "set by the proxy itself (framing, host, encoding or the api_key credential)",
            ));
        }
        extra_headers.push((name, header_value(&f, &v)?));
    }
    let ca = match &rp.ca_file {
        Some(path) => {
            Some(Arc::new(load_pem(path).map_err(|m| {
                ConfigError::new(format!("{field}.ca_file"), m)
            })?))
        }
        None => None,
    };
    if rp.api_version.is_some() && format != Format::AzureOpenAi {
        return Err(ConfigError::new(
            format!("{field}.api_version"),
            "only azure-openai providers take an api_version",
        ));
    }
    Ok(Provider {
        ca,
        api_version: rp.api_version.clone(),
        name: Arc::from(name),
        format,
        tls,
        authority: header_value(&format!("{field}.base_url"), &authority)?,
        host,
        port,
        base_path,
        literal_addr,
        auth,
        extra_headers,
    })
}

/// Certificates of a PEM file; an unreadable or empty file is an error here rather than a
/// panic inside the TLS connector later.
pub(super) fn load_pem(path: &str) -> Result<CaType, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let certs = X509::stack_from_pem(&pem).map_err(|e| format!("{path} is not PEM: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{path} holds no certificate"));
    }
    Ok(certs.into_boxed_slice())
}

/// The system's CA bundle. The vendored OpenSSL looks in its own build prefix, which holds
/// no certificates on a normal machine, so the bundle is located explicitly.
pub(super) fn system_ca_bundle(env: &dyn Env) -> Option<String> {
    let candidates = [
        env.var("SSL_CERT_FILE"),
        Some("/etc/ssl/certs/ca-certificates.crt".into()), // Debian, Ubuntu, Alpine
        Some("/etc/pki/tls/certs/ca-bundle.crt".into()),   // RHEL, Fedora
        Some("/etc/ssl/cert.pem".into()),                  // macOS, BSD
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|p| std::path::Path::new(p).is_file())
}

/// `https://host[:port][/prefix]` → (tls, host, port, prefix without trailing slash).
///
/// Messages never echo the URL: it may hold credentials. Credentials in the URL itself
/// (`http://user:key@host`) are refused rather than silently dropped: the provider's key
/// belongs in `api_key`, where it is sent in the provider's own header and redacted.
pub(super) fn parse_base_url(url: &str) -> Result<(bool, String, u16, String), String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|_| "is not a valid URL (value not shown)".to_string())?;
    let tls = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err("must start with http:// or https://".into()),
    };
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err(
            "must not carry credentials (user:password@): put the provider's key in api_key".into(),
        );
    }
    let host = uri
        .host()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| "has no host".to_string())?
        .to_ascii_lowercase();
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    if uri.query().is_some() {
        return Err("must not carry a query string".into());
    }
    let base_path = uri.path().trim_end_matches('/').to_string();
    Ok((tls, host, port, base_path))
}

/// The key a provider's own base_url host is found under in forward-proxy mode.
/// Clients reach it with plain HTTP (`HTTP_PROXY` + `http://` URL), so port 80 is implied.
pub(super) fn provider_host_key(p: &Provider) -> String {
    let default = if p.tls { 443 } else { 80 };
    if p.port == default || p.port == 80 {
        p.host.clone()
    } else {
        format!("{}:{}", p.host, p.port)
    }
}

pub(super) fn host_key(field: &str, h: &str) -> Result<String, ConfigError> {
    let key = h.trim().to_ascii_lowercase();
    match split_host_port(&key) {
        Some((_, Some(80))) => Ok(key.trim_end_matches(":80").to_string()),
        Some(_) => Ok(key),
        None => Err(ConfigError::new(
            field,
            format!("{h:?} is not a host or host:port"),
        )),
    }
}

pub(super) fn split_host_port(s: &str) -> Option<(&str, Option<u16>)> {
    if s.is_empty() || s.contains('/') || s.contains(char::is_whitespace) {
        return None;
    }
    match s.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && !h.ends_with(':') => p.parse().ok().map(|p| (h, Some(p))),
        Some(_) => None,
        None => Some((s, None)),
    }
}

/// Headers the proxy writes on every upstream request: a provider's `headers:` may not set
/// them (a second Host or Content-Length would make the request ambiguous).
const PROXY_SET: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "expect",
    "accept-encoding",
    "content-type",
];
