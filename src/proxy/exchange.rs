//! Steps 4–6 of the walk for LLM calls: per attempt, rewrite the request for the provider,
//! send it over Pingora's pooled connector, and either fall back (connect error, timeout,
//! 429, 5xx — all before any byte reached the client) or stream the response back chunk by
//! chunk. The proxy owns the exchange because Pingora's own retry can replay at most 64 KiB
//! of body, and each attempt needs its own model and credentials.

use super::{Ctx, Failure, Switchyard};
use crate::error::{ErrorCode, ProxyError};
use crate::policy::{Policy, Provider, Retry, Timeouts};
use crate::provider::{self, ClientRequest, Translator};
use crate::rewrite::BodyProbe;
use crate::route::{Attempt, Plan};
use crate::telemetry::AttemptOutcome;
use crate::upstream;
use crate::usage::{JsonTail, SseScanner, Usage};
use bytes::{Bytes, BytesMut};
use http::header;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::protocols::http::client::HttpSession;
use pingora::proxy::Session;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long an upstream connection may sit idle in the pool.
const POOL_IDLE: Duration = Duration::from_secs(60);
/// Largest non-streamed provider response collected for translation.
const MAX_TRANSLATED_BODY: usize = 64 << 20;

pub struct LlmRequest {
    pub path_and_query: String,
    pub body: Bytes,
    pub probe: Option<BodyProbe>,
}

/// Why one attempt produced no usable response.
enum AttemptError {
    Connect(String),
    Timeout(String),
    /// The connection broke while sending the request or reading the response header.
    Transport {
        msg: String,
        reused: bool,
    },
}

/// A plan for a model-less call to a provider's own host: that provider, as sent.
pub fn direct_plan(provider: usize) -> Plan {
    Plan {
        route: Arc::from("direct"),
        attempts: vec![Attempt {
            provider,
            upstream_model: None,
            model_label: Arc::from("none"),
            max_tokens: None,
            price: None,
        }],
        retry: Retry {
            attempts: 1,
            on_connect: false,
            on_timeout: false,
            on_429: false,
            on_5xx: false,
        },
        timeouts: Timeouts::default(),
    }
}

/// `GET /v1/models` in base-URL mode: the catalog, in OpenAI's list shape.
pub fn catalog_listing(policy: &Policy) -> Bytes {
    let data: Vec<_> = policy
        .models
        .iter()
        .map(|m| {
            serde_json::json!({
                "id": &*m.alias,
                "object": "model",
                "created": 0,
                "owned_by": &*policy.providers[m.provider].name,
            })
        })
        .collect();
    Bytes::from(serde_json::json!({ "object": "list", "data": data }).to_string())
}

impl Switchyard {
    pub(super) async fn forward(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        policy: &Policy,
        req: &LlmRequest,
        plan: &Plan,
    ) -> Result<(), Failure> {
        let metrics = &self.state.metrics;
        ctx.route = plan.route.clone();
        let mut n = 0;
        let mut fresh_retry_used = false;
        let final_error = loop {
            let Some(attempt) = plan.attempt(n) else {
                break ProxyError::new(ErrorCode::UpstreamUnavailable, "no attempt left");
            };
            let last = plan.attempt(n + 1).is_none();
            let provider = &policy.providers[attempt.provider];
            ctx.provider = provider.name.clone();
            ctx.model = attempt.model_label.clone();
            ctx.price = attempt.price;
            if n > 0 {
                metrics.fallbacks.with_label_values(&[&*plan.route]).inc();
            }

            let client = ClientRequest {
                ingress: provider::Ingress::of_path(&req.path_and_query),
                header: session.req_header(),
                path_and_query: &req.path_and_query,
                body: &req.body,
                probe: req.probe.as_ref(),
            };
            // A request this provider cannot take (e.g. embeddings to Anthropic) is the
            // client's error, whatever the fallbacks.
            let out = provider::outbound(provider, &client, attempt)?;
            let translator = out.translator;
            ctx.pause();
            let result = self
                .attempt(provider, out.header, out.body, &plan.timeouts)
                .await;
            ctx.resume();
            let outcome = match &result {
                Ok((up, _)) => AttemptOutcome::from_status(status_of(up)),
                Err(AttemptError::Connect(_)) => AttemptOutcome::ConnectError,
                Err(AttemptError::Timeout(_)) => AttemptOutcome::Timeout,
                Err(AttemptError::Transport { .. }) => AttemptOutcome::Error,
            };
            metrics
                .upstream_attempts
                .with_label_values(&[&*provider.name, outcome.as_str()])
                .inc();

            match result {
                Ok((up, peer)) => {
                    let status = status_of(&up);
                    if !last && plan.retry.retries_status(status) {
                        tracing::info!(
                            route = &*plan.route,
                            provider = &*provider.name,
                            status,
                            "upstream refused; trying the next target"
                        );
                        n += 1;
                        continue;
                    }
                    return match translator {
                        None => self.relay(session, ctx, up, &peer, provider, plan).await,
                        Some(t) => {
                            self.relay_translated(session, ctx, up, &peer, provider, plan, t)
                                .await
                        }
                    };
                }
                Err(AttemptError::Transport { msg, reused: true }) if !fresh_retry_used => {
                    // A pooled connection the server had already closed: one more try on a
                    // fresh one, not counted against the plan.
                    tracing::debug!(
                        provider = &*provider.name,
                        "reused connection failed ({msg}); retrying fresh"
                    );
                    fresh_retry_used = true;
                    continue;
                }
                Err(AttemptError::Connect(msg)) | Err(AttemptError::Transport { msg, .. }) => {
                    tracing::warn!(
                        route = &*plan.route,
                        provider = &*provider.name,
                        "upstream unavailable: {msg}"
                    );
                    if last || !plan.retry.on_connect {
                        break ProxyError::new(
                            ErrorCode::UpstreamUnavailable,
                            format!("provider {} is unavailable", provider.name),
                        );
                    }
                }
                Err(AttemptError::Timeout(msg)) => {
                    tracing::warn!(
                        route = &*plan.route,
                        provider = &*provider.name,
                        "upstream timed out: {msg}"
                    );
                    if last || !plan.retry.on_timeout {
                        break ProxyError::new(
                            ErrorCode::UpstreamTimeout,
                            format!("provider {} did not answer in time", provider.name),
                        );
                    }
                }
            }
            n += 1;
        };
        Err(final_error.into())
    }

    /// Sends one rewritten request and reads the response header.
    async fn attempt(
        &self,
        provider: &Provider,
        header: RequestHeader,
        body: Bytes,
        timeouts: &Timeouts,
    ) -> Result<(HttpSession, HttpPeer), AttemptError> {
        let peer = upstream::peer_for(&self.resolver, provider, timeouts)
            .await
            .map_err(AttemptError::Connect)?;
        let (mut up, reused) = self
            .connector
            .get_http_session(&peer)
            .await
            .map_err(|e| match e.etype() {
                ConnectTimedout => AttemptError::Timeout(e.to_string()),
                _ => AttemptError::Connect(e.to_string()),
            })?;
        up.set_read_timeout(Some(timeouts.first_byte));
        // Pingora's own per-operation timeouts (one timer wheel, no extra tokio timer):
        // a stalled write or a header that does not come within first_byte fails the attempt.
        up.set_write_timeout(Some(timeouts.first_byte));
        let exchange = async {
            up.write_request_header(Box::new(header)).await?;
            if !body.is_empty() {
                up.write_request_body(body, true).await?;
            }
            up.finish_request_body().await?;
            up.read_response_header().await
        };
        match exchange.await {
            Err(e) if matches!(e.etype(), ReadTimedout | WriteTimedout) => {
                Err(AttemptError::Timeout(e.to_string()))
            }
            Err(e) => Err(AttemptError::Transport {
                msg: e.to_string(),
                reused,
            }),
            Ok(()) => {
                up.set_read_timeout(Some(timeouts.idle));
                Ok((up, peer))
            }
        }
    }

    /// Streams the upstream response to the client as it arrives.
    async fn relay(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        mut up: HttpSession,
        peer: &HttpPeer,
        provider: &Provider,
        plan: &Plan,
    ) -> Result<(), Failure> {
        let upstream_header = up.response_header().ok_or_else(|| {
            Failure::Answer(ProxyError::new(
                ErrorCode::Internal,
                "response header missing",
            ))
        })?;
        let resp = downstream_header(upstream_header, &plan.route, provider, &ctx.model)
            .map_err(Failure::Abort)?;
        ctx.status = resp.status.as_u16();
        let mut scan = Scan::for_response(&resp);
        ctx.pause();
        if let Err(e) = session.write_response_header(Box::new(resp), false).await {
            self.cut("client", ctx, provider, scan.partial());
            return Err(Failure::Abort(e));
        }
        let mut first = scan.is_stream();
        loop {
            match up.read_response_body().await {
                Ok(Some(chunk)) => {
                    scan.feed(&chunk);
                    if first {
                        first = false;
                        self.first_token(ctx, plan);
                    }
                    if let Err(e) = session.write_response_body(Some(chunk), false).await {
                        self.cut("client", ctx, provider, scan.partial());
                        return Err(Failure::Abort(e));
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(
                        provider = &*provider.name,
                        "upstream broke mid-response: {e}"
                    );
                    self.cut("upstream", ctx, provider, scan.partial());
                    return Err(Failure::Abort(e));
                }
            }
        }
        if let Err(e) = session.write_response_body(None, true).await {
            self.cut("client", ctx, provider, scan.partial());
            return Err(Failure::Abort(e));
        }
        if let Some(u) = scan.finish() {
            self.state
                .metrics
                .record_usage(&provider.name, &ctx.model, &ctx.team, &u, ctx.price);
        }
        if up.response_done() {
            self.connector
                .release_http_session(up, peer, Some(POOL_IDLE))
                .await;
        }
        Ok(())
    }

    /// Relays a response in another wire format, translated into OpenAI's as it arrives.
    #[allow(clippy::too_many_arguments)]
    async fn relay_translated(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        mut up: HttpSession,
        peer: &HttpPeer,
        provider: &Provider,
        plan: &Plan,
        mut tr: Box<dyn Translator>,
    ) -> Result<(), Failure> {
        let upstream_header = up.response_header().ok_or_else(|| {
            Failure::Answer(ProxyError::new(
                ErrorCode::Internal,
                "response header missing",
            ))
        })?;
        let status = upstream_header.status;
        let retry_after = upstream_header.headers.get(header::RETRY_AFTER).cloned();
        let streaming = status.is_success() && tr.streaming();
        let mut first = streaming;
        let mut out = BytesMut::with_capacity(4096);
        let mut body = Vec::new();
        if streaming {
            let h = if tr.keeps_upstream_headers() {
                let mut h = downstream_header(upstream_header, &plan.route, provider, &ctx.model)
                    .map_err(Failure::Abort)?;
                h.remove_header(&header::CONTENT_LENGTH);
                h.insert_header(header::TRANSFER_ENCODING, "chunked")
                    .map_err(Failure::Abort)?;
                h
            } else {
                let mut h = ResponseHeader::build(status, Some(6)).map_err(Failure::Abort)?;
                let set = |h: &mut ResponseHeader| -> pingora::Result<()> {
                    h.insert_header(header::CONTENT_TYPE, "text/event-stream; charset=utf-8")?;
                    h.insert_header(header::CACHE_CONTROL, "no-cache")?;
                    h.insert_header(header::TRANSFER_ENCODING, "chunked")?;
                    add_route_headers(h, &plan.route, provider, &ctx.model)
                };
                set(&mut h).map_err(Failure::Abort)?;
                h
            };
            ctx.status = status.as_u16();
            ctx.pause();
            if let Err(e) = session.write_response_header(Box::new(h), false).await {
                self.cut(
                    "client",
                    ctx,
                    provider,
                    tr.usage().unwrap_or_else(|| tr.partial_usage()),
                );
                return Err(Failure::Abort(e));
            }
        }
        if !streaming {
            // Collecting the provider's answer is upstream wait, not proxy work.
            ctx.pause();
        }
        loop {
            match up.read_response_body().await {
                Ok(Some(chunk)) => {
                    if !streaming {
                        if body.len() + chunk.len() > MAX_TRANSLATED_BODY {
                            return Err(Failure::Answer(ProxyError::new(
                                ErrorCode::UpstreamUnavailable,
                                "provider response too large to translate",
                            )));
                        }
                        body.extend_from_slice(&chunk);
                        continue;
                    }
                    let t = Instant::now();
                    tr.feed(&chunk, &mut out);
                    ctx.overhead += t.elapsed();
                    if !out.is_empty() {
                        if first {
                            first = false;
                            self.first_token(ctx, plan);
                        }
                        let bytes = out.split().freeze();
                        if let Err(e) = session.write_response_body(Some(bytes), false).await {
                            self.cut(
                                "client",
                                ctx,
                                provider,
                                tr.usage().unwrap_or_else(|| tr.partial_usage()),
                            );
                            return Err(Failure::Abort(e));
                        }
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(
                        provider = &*provider.name,
                        "upstream broke mid-response: {e}"
                    );
                    self.cut(
                        "upstream",
                        ctx,
                        provider,
                        tr.usage().unwrap_or_else(|| tr.partial_usage()),
                    );
                    if streaming {
                        return Err(Failure::Abort(e));
                    }
                    return Err(Failure::Answer(ProxyError::new(
                        ErrorCode::UpstreamUnavailable,
                        format!("provider {} broke off its response", provider.name),
                    )));
                }
            }
        }
        if !streaming {
            ctx.resume();
        }
        if !streaming {
            // Whole body: a translated completion, or the provider's error in OpenAI's shape.
            let translated = if status.is_success() {
                tr.feed(&body, &mut out);
                tr.finish(&mut out);
                out.split().freeze()
            } else {
                match tr.translate_error(&body) {
                    Some(v) => Bytes::from(v.to_string()),
                    None => Bytes::from(body),
                }
            };
            let cost = tr
                .usage()
                .and_then(|u| ctx.price.map(|p| p.cost_micros(&u)));
            let mut h = ResponseHeader::build(status, Some(7)).map_err(Failure::Abort)?;
            let set = |h: &mut ResponseHeader| -> pingora::Result<()> {
                h.insert_header(header::CONTENT_TYPE, "application/json")?;
                h.insert_header(header::CONTENT_LENGTH, translated.len().to_string())?;
                if let Some(c) = cost {
                    // The whole response is known before its header goes out: say its cost.
                    h.insert_header(
                        "x-switchyard-cost-usd",
                        format!("{}.{:06}", c / 1_000_000, c % 1_000_000),
                    )?;
                }
                if let Some(v) = retry_after {
                    h.insert_header(header::RETRY_AFTER, v)?;
                }
                add_route_headers(h, &plan.route, provider, &ctx.model)
            };
            set(&mut h).map_err(Failure::Abort)?;
            ctx.status = status.as_u16();
            ctx.pause();
            if let Err(e) = session.write_response_header(Box::new(h), false).await {
                self.cut(
                    "client",
                    ctx,
                    provider,
                    tr.usage().unwrap_or_else(|| tr.partial_usage()),
                );
                return Err(Failure::Abort(e));
            }
            if let Err(e) = session.write_response_body(Some(translated), true).await {
                self.cut(
                    "client",
                    ctx,
                    provider,
                    tr.usage().unwrap_or_else(|| tr.partial_usage()),
                );
                return Err(Failure::Abort(e));
            }
        } else {
            tr.finish(&mut out);
            let rest = out.split().freeze();
            let write = session.write_response_body(Some(rest), true).await;
            if let Err(e) = write {
                self.cut(
                    "client",
                    ctx,
                    provider,
                    tr.usage().unwrap_or_else(|| tr.partial_usage()),
                );
                return Err(Failure::Abort(e));
            }
        }
        if let Some(u) = tr.usage() {
            self.state
                .metrics
                .record_usage(&provider.name, &ctx.model, &ctx.team, &u, ctx.price);
        }
        if up.response_done() {
            self.connector
                .release_http_session(up, peer, Some(POOL_IDLE))
                .await;
        }
        Ok(())
    }

    /// The first bytes of a streamed answer reach the client.
    fn first_token(&self, ctx: &Ctx, plan: &Plan) {
        self.state
            .metrics
            .time_to_first_token
            .with_label_values(&[&*plan.route])
            .observe(ctx.start.elapsed().as_secs_f64());
    }

    /// A response cut before its end, by `side`: counted, and what was streamed so far
    /// accounted as partial usage.
    fn cut(&self, side: &str, ctx: &Ctx, provider: &Provider, partial: Usage) {
        let m = &self.state.metrics;
        m.streams_interrupted.with_label_values(&[side]).inc();
        m.partial_usage
            .with_label_values(&[&*provider.name, &*ctx.model])
            .inc();
        m.record_usage(&provider.name, &ctx.model, &ctx.team, &partial, ctx.price);
        tracing::info!(
            provider = &*provider.name,
            model = &*ctx.model,
            side,
            output_tokens = partial.output,
            "response cut; partial usage recorded"
        );
    }
}

/// What the relay scans for usage, by response type. Error bodies are not scanned.
enum Scan {
    None,
    Json(JsonTail),
    Sse(SseScanner),
}

impl Scan {
    fn for_response(resp: &ResponseHeader) -> Scan {
        if !resp.status.is_success() {
            return Scan::None;
        }
        let ct = resp
            .headers
            .get(header::CONTENT_TYPE)
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        if ct.starts_with(b"text/event-stream") {
            Scan::Sse(SseScanner::default())
        } else if ct.starts_with(b"application/json") {
            Scan::Json(JsonTail::default())
        } else {
            Scan::None
        }
    }

    fn is_stream(&self) -> bool {
        matches!(self, Scan::Sse(_))
    }

    fn feed(&mut self, chunk: &[u8]) {
        match self {
            Scan::None => {}
            Scan::Json(t) => t.feed(chunk),
            Scan::Sse(s) => s.feed(chunk),
        }
    }

    fn finish(&self) -> Option<Usage> {
        match self {
            Scan::None => None,
            Scan::Json(t) => t.finish(),
            Scan::Sse(s) => s.usage,
        }
    }

    /// Usage so far for a cut response: the provider's if it came, else the deltas.
    fn partial(&self) -> Usage {
        match self {
            Scan::Sse(s) => s.usage.unwrap_or(Usage {
                output: s.deltas,
                ..Usage::default()
            }),
            _ => Usage::default(),
        }
    }
}

fn status_of(up: &HttpSession) -> u16 {
    up.response_header().map_or(0, |h| h.status.as_u16())
}

const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
];

fn downstream_header(
    up: &ResponseHeader,
    route: &str,
    provider: &Provider,
    model: &str,
) -> Result<ResponseHeader> {
    let mut h = ResponseHeader::build(up.status, Some(up.headers.len() + 4))?;
    for (name, value) in up.headers.iter() {
        if !HOP_BY_HOP.contains(&name.as_str()) {
            h.append_header(name.clone(), value.clone())?;
        }
    }
    if !h.headers.contains_key(header::CONTENT_LENGTH) {
        h.insert_header(header::TRANSFER_ENCODING, "chunked")?;
    }
    add_route_headers(&mut h, route, provider, model)?;
    Ok(h)
}

fn add_route_headers(
    h: &mut ResponseHeader,
    route: &str,
    provider: &Provider,
    model: &str,
) -> Result<()> {
    h.insert_header("x-switchyard-route", route)?;
    h.insert_header("x-switchyard-provider", &*provider.name)?;
    if let Ok(v) = http::HeaderValue::from_str(model) {
        h.insert_header("x-switchyard-model", v)?;
    }
    Ok(())
}
