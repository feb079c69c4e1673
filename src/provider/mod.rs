//! Provider wire formats. Each turns the client's OpenAI-format request into the request
//! its provider expects (path, credentials, body) and, where the format differs, translates
//! the response back: `openai` (and every OpenAI-compatible server) is a passthrough with
//! the model spliced in; `azure-openai` moves the model into the deployment path;
//! `anthropic` translates both ways.

pub mod anthropic;
pub mod azure;
mod chunks;
pub mod gemini;
pub mod messages;
pub mod openai;

use crate::error::{ErrorCode, ProxyError};
use crate::policy::{Format, Provider};
use crate::rewrite::{self, BodyProbe};
use crate::route::Attempt;
use crate::usage::Usage;
use bytes::{Bytes, BytesMut};
use pingora::http::RequestHeader;

/// Turns upstream response bytes into what the client receives.
pub trait Translator: Send {
    /// Upstream bytes in; client bytes appended to `out` (possibly none yet).
    fn feed(&mut self, chunk: &[u8], out: &mut BytesMut);
    /// The upstream body ended; append what is left.
    fn finish(&mut self, out: &mut BytesMut);
    fn usage(&self) -> Option<Usage>;
    /// What was streamed before a cut, counted from the deltas (provider totals unknown).
    fn partial_usage(&self) -> Usage;
    /// Usage to account if the response is cut now: the provider's, else the partial count.
    fn so_far(&self) -> Usage {
        self.usage().unwrap_or_else(|| self.partial_usage())
    }
    /// Whether the client receives an SSE stream (else one JSON body).
    fn streaming(&self) -> bool;
    /// Same wire format both sides: keep the provider's response headers (request ids,
    /// rate-limit headers) instead of building new ones.
    fn keeps_upstream_headers(&self) -> bool {
        false
    }
    /// The provider's error body in OpenAI's error shape, if it has its own.
    fn translate_error(&self, _body: &[u8]) -> Option<serde_json::Value> {
        None
    }
}

/// A non-streamed answer in another format: collected whole, then translated.
pub struct Whole {
    body: Vec<u8>,
    usage: Option<Usage>,
    translate: fn(&serde_json::Value) -> (serde_json::Value, Usage),
    error: fn(&[u8]) -> Option<serde_json::Value>,
}

impl Whole {
    pub fn new(
        translate: fn(&serde_json::Value) -> (serde_json::Value, Usage),
        error: fn(&[u8]) -> Option<serde_json::Value>,
    ) -> Self {
        Whole {
            body: Vec::new(),
            usage: None,
            translate,
            error,
        }
    }
}

impl Translator for Whole {
    fn feed(&mut self, chunk: &[u8], _out: &mut BytesMut) {
        self.body.extend_from_slice(chunk);
    }

    fn finish(&mut self, out: &mut BytesMut) {
        match serde_json::from_slice::<serde_json::Value>(&self.body) {
            Ok(v) => {
                let (r, u) = (self.translate)(&v);
                self.usage = Some(u);
                out.extend_from_slice(r.to_string().as_bytes());
            }
            Err(_) => out.extend_from_slice(&self.body),
        }
    }

    fn usage(&self) -> Option<Usage> {
        self.usage
    }

    fn partial_usage(&self) -> Usage {
        Usage::default()
    }

    fn streaming(&self) -> bool {
        false
    }

    fn translate_error(&self, body: &[u8]) -> Option<serde_json::Value> {
        (self.error)(body)
    }
}

/// An OpenAI chat request about to be translated for another format.
struct Chat<'a> {
    req: serde_json::Value,
    /// The provider's model id.
    model: &'a str,
    stream: bool,
    include_usage: bool,
}

impl<'a> Chat<'a> {
    fn parse(
        provider: &Provider,
        client: &ClientRequest<'a>,
        attempt: &'a Attempt,
    ) -> Result<Chat<'a>, ProxyError> {
        if path_only(client.path_and_query) == "/v1/responses" {
            return Err(ProxyError::new(
                ErrorCode::InvalidRequest,
                format!(
                    "the Responses API (/v1/responses) is not translated to {} providers yet; \
                     route it to an OpenAI-format provider (provider {} is {})",
                    provider.format.as_str(),
                    provider.name,
                    provider.format.as_str(),
                ),
            ));
        }
        if path_only(client.path_and_query) != "/v1/chat/completions" {
            return Err(ProxyError::new(
                ErrorCode::InvalidRequest,
                format!(
                    "provider {} ({}) serves chat completions only, not {}",
                    provider.name,
                    provider.format.as_str(),
                    crate::error::clip(path_only(client.path_and_query))
                ),
            ));
        }
        let req = client.json()?;
        let model = client.model_for(attempt).unwrap_or_default();
        let stream = req.get("stream").and_then(|v| v.as_bool()) == Some(true);
        let include_usage = req
            .pointer("/stream_options/include_usage")
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        Ok(Chat {
            req,
            model,
            stream,
            include_usage,
        })
    }
}

/// One upstream request, ready to send, and how to read its answer.
pub struct Outbound {
    /// Request line and headers in wire form (`rewrite::upstream_head`).
    pub head: Vec<u8>,
    pub body: rewrite::Body,
    /// `None`: the response is relayed byte for byte.
    pub translator: Option<Box<dyn Translator>>,
}

/// What the client sent, as the exchange holds it.
pub struct ClientRequest<'a> {
    /// The API the client speaks: `/v1/messages` is Anthropic's, anything else OpenAI's.
    pub ingress: Ingress,
    pub header: &'a RequestHeader,
    pub path_and_query: &'a str,
    pub body: &'a Bytes,
    pub probe: Option<&'a BodyProbe>,
}

impl<'c> ClientRequest<'c> {
    /// The body as a JSON value, for the translating paths (the relaying ones never parse
    /// it whole).
    fn json(&self) -> Result<serde_json::Value, ProxyError> {
        serde_json::from_slice(self.body).map_err(|e| {
            ProxyError::new(
                ErrorCode::InvalidRequest,
                format!("request body is not valid JSON: {e}"),
            )
        })
    }

    /// The model this attempt sends: the route's upstream name, else the client's own.
    fn model_for<'a>(&self, attempt: &'a Attempt) -> Option<&'a str>
    where
        'c: 'a,
    {
        attempt
            .upstream_model
            .as_deref()
            .or(self.probe.map(|p| p.model.as_str()))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingress {
    OpenAi,
    Anthropic,
}

impl Ingress {
    pub fn of_path(path_and_query: &str) -> Ingress {
        if path_only(path_and_query) == "/v1/messages" {
            Ingress::Anthropic
        } else {
            Ingress::OpenAi
        }
    }
}

/// The text of OpenAI message content (a string, or the text parts joined).
pub(crate) fn text_of(content: &serde_json::Value) -> String {
    match content {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(serde_json::Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// Appends items (`key`: "content" blocks or "parts") to the conversation, merging
/// consecutive turns of the same role: Anthropic and Gemini want roles to alternate.
pub(crate) fn push_turn(
    turns: &mut Vec<serde_json::Value>,
    key: &str,
    role: &str,
    items: Vec<serde_json::Value>,
) {
    if items.is_empty() {
        return;
    }
    if let Some(last) = turns.last_mut() {
        if last["role"] == role {
            if let Some(arr) = last[key].as_array_mut() {
                arr.extend(items);
                return;
            }
        }
    }
    let mut turn = serde_json::json!({ "role": role });
    turn[key] = serde_json::Value::Array(items);
    turns.push(turn);
}

/// A model id as one URL path segment: unreserved bytes kept, the rest percent-encoded
/// (so `a/b` or a space cannot change the upstream path).
pub(crate) fn path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn path_only(p: &str) -> &str {
    p.split_once('?').map_or(p, |(a, _)| a)
}

pub fn outbound(
    provider: &Provider,
    client: &ClientRequest<'_>,
    attempt: &Attempt,
) -> Result<Outbound, ProxyError> {
    if client.ingress == Ingress::Anthropic {
        return anthropic_ingress(provider, client, attempt);
    }
    match provider.format {
        Format::OpenAi => {
            let (body, translator) = openai_body(client, attempt);
            let path = rewrite::upstream_path(provider, client.path_and_query);
            let head =
                rewrite::upstream_head(client.header, provider, &path, body.len(), &[], &[])?;
            Ok(Outbound {
                head,
                body,
                translator,
            })
        }
        Format::AzureOpenAi => {
            let (body, translator) = openai_body(client, attempt);
            let deployment = client.model_for(attempt).ok_or_else(|| {
                ProxyError::new(
                    ErrorCode::InvalidRequest,
                    "Azure OpenAI needs a model (its deployment)",
                )
            })?;
            let path = azure::path(provider, client.path_and_query, deployment);
            let head =
                rewrite::upstream_head(client.header, provider, &path, body.len(), &[], &[])?;
            Ok(Outbound {
                head,
                body,
                translator,
            })
        }
        Format::Gemini => {
            let Chat {
                req,
                model,
                stream,
                include_usage,
            } = Chat::parse(provider, client, attempt)?;
            let body = Bytes::from(gemini::request(&req)?.to_string());
            let model_path = path_segment(model);
            let path = if stream {
                format!(
                    "{}/v1beta/models/{model_path}:streamGenerateContent?alt=sse",
                    provider.base_path
                )
            } else {
                format!(
                    "{}/v1beta/models/{model_path}:generateContent",
                    provider.base_path
                )
            };
            let translator: Box<dyn Translator> = if stream {
                Box::new(gemini::Stream::new(include_usage))
            } else {
                Box::new(Whole::new(gemini::response, gemini::error))
            };
            json_outbound(client, provider, &path, body, translator, &[])
        }
        Format::Anthropic => {
            let Chat {
                req,
                model,
                stream,
                include_usage,
            } = Chat::parse(provider, client, attempt)?;
            let translated = anthropic::request(&req, model, attempt.max_tokens)?;
            let body = Bytes::from(translated.to_string());
            let path = format!("{}/v1/messages", provider.base_path);
            let translator: Box<dyn Translator> = if stream {
                Box::new(anthropic::Stream::new(include_usage))
            } else {
                Box::new(Whole::new(anthropic::response, anthropic::error))
            };
            let version = anthropic_version(client);
            json_outbound(client, provider, &path, body, translator, version)
        }
    }
}

/// `/v1/messages` from an Anthropic client: to an Anthropic provider it passes through with
/// model and credentials rewritten.
fn anthropic_ingress(
    provider: &Provider,
    client: &ClientRequest<'_>,
    attempt: &Attempt,
) -> Result<Outbound, ProxyError> {
    match provider.format {
        Format::Anthropic => {}
        Format::OpenAi | Format::AzureOpenAi => {
            // Translated: Messages request → chat completion, answer back to Messages.
            let req = client.json()?;
            let model = client.model_for(attempt).unwrap_or_default();
            let translated = messages::request(&req, model)?;
            let stream = translated.get("stream").and_then(|v| v.as_bool()) == Some(true);
            let body = Bytes::from(translated.to_string());
            let path = if provider.format == Format::AzureOpenAi {
                azure::path(provider, "/v1/chat/completions", model)
            } else {
                rewrite::upstream_path(provider, "/v1/chat/completions")
            };
            let translator: Box<dyn Translator> = if stream {
                Box::new(messages::Stream::default())
            } else {
                Box::new(Whole::new(messages::response, messages::error))
            };
            let head = rewrite::upstream_head(
                client.header,
                provider,
                &path,
                body.len(),
                JSON,
                &["anthropic-version", "anthropic-beta"],
            )?;
            return Ok(Outbound {
                head,
                body: body.into(),
                translator: Some(translator),
            });
        }
        Format::Gemini => {
            return Err(ProxyError::new(
                ErrorCode::InvalidRequest,
                format!(
                    "/v1/messages (Anthropic API) cannot be sent to provider {} (gemini) yet",
                    provider.name
                ),
            ))
        }
    }
    let body = match client.probe {
        Some(p) => rewrite::with_model(
            client.body,
            &p.model_span,
            attempt.upstream_model.as_deref(),
        ),
        None => client.body.clone().into(),
    };
    let path = format!("{}{}", provider.base_path, client.path_and_query);
    let set = anthropic_version(client);
    let head = rewrite::upstream_head(client.header, provider, &path, body.len(), set, &[])?;
    Ok(Outbound {
        head,
        body,
        translator: Some(Box::new(anthropic::Passthrough::default())),
    })
}

const JSON: rewrite::Set<'static> = &[("content-type", "application/json")];

/// An upstream request whose JSON body the proxy wrote, answered through `translator`.
fn json_outbound(
    client: &ClientRequest<'_>,
    provider: &Provider,
    path: &str,
    body: Bytes,
    translator: Box<dyn Translator>,
    extra: rewrite::Set<'_>,
) -> Result<Outbound, ProxyError> {
    let head = match extra {
        [] => rewrite::upstream_head(client.header, provider, path, body.len(), JSON, &[])?,
        _ => {
            let set: Vec<(&str, &str)> = JSON.iter().chain(extra).copied().collect();
            rewrite::upstream_head(client.header, provider, path, body.len(), &set, &[])?
        }
    };
    Ok(Outbound {
        head,
        body: body.into(),
        translator: Some(translator),
    })
}

/// Anthropic requires a version header; the client's, if it sent one, is kept.
fn anthropic_version(client: &ClientRequest<'_>) -> rewrite::Set<'static> {
    if client.header.headers.contains_key("anthropic-version") {
        &[]
    } else {
        &[("anthropic-version", anthropic::VERSION)]
    }
}

/// The client's body with the attempt's model spliced in (no re-serialisation). A stream
/// that did not ask for usage gets `include_usage` added, and its extra chunk hidden again.
fn openai_body(
    client: &ClientRequest<'_>,
    attempt: &Attempt,
) -> (rewrite::Body, Option<Box<dyn Translator>>) {
    let model = attempt.upstream_model.as_deref();
    // Only Chat Completions and legacy Completions take `stream_options.include_usage`;
    // the Responses API always reports usage and refuses the parameter.
    let takes_include_usage = matches!(
        path_only(client.path_and_query),
        "/v1/chat/completions" | "/v1/completions"
    );
    match client.probe {
        Some(p) if !takes_include_usage => {
            (rewrite::with_model(client.body, &p.model_span, model), None)
        }
        Some(p) => match rewrite::with_usage_requested(client.body, p, model) {
            Some(body) => (body.into(), Some(Box::new(openai::HideUsage::default()))),
            None => (rewrite::with_model(client.body, &p.model_span, model), None),
        },
        None => (client.body.clone().into(), None),
    }
}
