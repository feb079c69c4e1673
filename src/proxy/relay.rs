//! Step 6 of the walk: the chosen upstream's answer streamed back to the client as it is
//! read — relayed byte for byte (usage scanned on the side) or translated from another
//! wire format — with usage, cost, time to first token and cut streams accounted.

use super::batch::{read_batch, Batch};
use super::{Ctx, Failure, Switchyard};
use crate::error::{ErrorCode, ProxyError};
use crate::policy::Provider;
use crate::provider::Translator;
use crate::route::Plan;
use crate::usage::{JsonTail, SseScanner, Usage};
use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, StatusCode};
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::protocols::http::v1::client::HttpSession as Http1Session;
use pingora::proxy::Session;
use std::time::Instant;

/// Largest non-streamed provider response collected for translation.
const MAX_TRANSLATED_BODY: usize = 64 << 20;

impl Switchyard {
    /// Streams the upstream response to the client as it arrives.
    pub(super) async fn relay(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        mut up: Http1Session,
        pool_key: u64,
        provider: &Provider,
        plan: &Plan,
    ) -> Result<(), Failure> {
        let upstream_header = up.resp_header().ok_or_else(|| {
            Failure::Answer(ProxyError::new(
                ErrorCode::Internal,
                "response header missing",
            ))
        })?;
        let resp = response_header(
            upstream_header.status,
            downstream_headers(upstream_header, plan, provider, &ctx.model),
        );
        ctx.status = resp.status.as_u16();
        let mut scan = Scan::for_response(&resp);
        ctx.pause();
        session
            .write_response_header(Box::new(resp), false)
            .await
            .map_err(|e| self.client_cut(ctx, provider, scan.partial(), e))?;
        if session.req_header().method == http::Method::HEAD {
            // No body follows a HEAD answer, whatever its Content-Length says. The upstream
            // session did not see the request go out, so it would wait for one: the
            // connection is closed rather than pooled.
            return session
                .write_response_body(None, true)
                .await
                .map_err(Failure::Abort);
        }
        let mut first = scan.is_stream();
        let mut batch = Batch::default();
        let mut ended = false;
        while !ended {
            let read = read_batch(&mut up, |piece| {
                scan.feed(&piece);
                batch.push(piece);
            })
            .await;
            let done = match read {
                Ok(Some(done)) => done,
                Ok(None) => break,
                Err(e) => {
                    self.upstream_broke(ctx, provider, scan.partial(), &e);
                    return Err(Failure::Abort(e));
                }
            };
            if first {
                first = false;
                self.first_token(ctx, plan);
            }
            ended = done.end;
            session
                .write_response_body(Some(batch.take()), ended)
                .await
                .map_err(|e| self.client_cut(ctx, provider, scan.partial(), e))?;
            if let Some(e) = done.broke {
                self.upstream_broke(ctx, provider, scan.partial(), &e);
                return Err(Failure::Abort(e));
            }
        }
        if !ended {
            session
                .write_response_body(None, true)
                .await
                .map_err(|e| self.client_cut(ctx, provider, scan.partial(), e))?;
        }
        self.completed(ctx, provider, scan.finish(), up, pool_key)
            .await;
        Ok(())
    }

    /// Relays a response in another wire format, translated into OpenAI's as it arrives.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn relay_translated(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        mut up: Http1Session,
        pool_key: u64,
        provider: &Provider,
        plan: &Plan,
        mut tr: Box<dyn Translator>,
    ) -> Result<(), Failure> {
        let upstream_header = up.resp_header().ok_or_else(|| {
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
            let headers = if tr.keeps_upstream_headers() {
                let mut h = downstream_headers(upstream_header, plan, provider, &ctx.model);
                h.remove(header::CONTENT_LENGTH);
                h.insert(header::TRANSFER_ENCODING, CHUNKED);
                h
            } else {
                let mut h = HeaderMap::with_capacity(6);
                h.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/event-stream; charset=utf-8"),
                );
                h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
                h.insert(header::TRANSFER_ENCODING, CHUNKED);
                add_route_headers(&mut h, plan, provider, &ctx.model);
                h
            };
            let h = response_header(status, headers);
            ctx.status = status.as_u16();
            ctx.pause();
            session
                .write_response_header(Box::new(h), false)
                .await
                .map_err(|e| self.client_cut(ctx, provider, tr.so_far(), e))?;
        }
        if streaming {
            loop {
                let mut spent = std::time::Duration::ZERO;
                let read = read_batch(&mut up, |piece| {
                    let t = Instant::now();
                    tr.feed(&piece, &mut out);
                    spent += t.elapsed();
                })
                .await;
                ctx.overhead += spent;
                let done = match read {
                    Ok(Some(done)) => done,
                    Ok(None) => break,
                    Err(e) => {
                        self.upstream_broke(ctx, provider, tr.so_far(), &e);
                        return Err(Failure::Abort(e));
                    }
                };
                if !out.is_empty() {
                    if first {
                        first = false;
                        self.first_token(ctx, plan);
                    }
                    let bytes = out.split().freeze();
                    session
                        .write_response_body(Some(bytes), false)
                        .await
                        .map_err(|e| self.client_cut(ctx, provider, tr.so_far(), e))?;
                }
                if let Some(e) = done.broke {
                    self.upstream_broke(ctx, provider, tr.so_far(), &e);
                    return Err(Failure::Abort(e));
                }
                if done.end {
                    break;
                }
            }
        } else {
            // Collecting the provider's answer is upstream wait, not proxy work.
            ctx.pause();
            loop {
                match up.read_body_bytes().await {
                    Ok(Some(chunk)) => {
                        if body.len() + chunk.len() > MAX_TRANSLATED_BODY {
                            return Err(Failure::Answer(ProxyError::new(
                                ErrorCode::UpstreamUnavailable,
                                "provider response too large to translate",
                            )));
                        }
                        body.extend_from_slice(&chunk);
                    }
                    Ok(None) => break,
                    Err(e) => {
                        self.upstream_broke(ctx, provider, tr.so_far(), &e);
                        return Err(Failure::Answer(ProxyError::new(
                            ErrorCode::UpstreamUnavailable,
                            format!("provider {} broke off its response", provider.name),
                        )));
                    }
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
            let cost = tr.usage().and_then(|u| ctx.price.map(|p| p.cost(&u)));
            let mut headers = HeaderMap::with_capacity(7);
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(translated.len()));
            if let Some(c) = cost {
                // The whole response is known before its header goes out: say its cost.
                if let Ok(v) = HeaderValue::from_str(&crate::price::usd_decimal(c)) {
                    headers.insert(COST, v);
                }
            }
            if let Some(v) = retry_after {
                headers.insert(header::RETRY_AFTER, v);
            }
            add_route_headers(&mut headers, plan, provider, &ctx.model);
            let h = response_header(status, headers);
            ctx.status = status.as_u16();
            ctx.pause();
            session
                .write_response_header(Box::new(h), false)
                .await
                .map_err(|e| self.client_cut(ctx, provider, tr.so_far(), e))?;
            session
                .write_response_body(Some(translated), true)
                .await
                .map_err(|e| self.client_cut(ctx, provider, tr.so_far(), e))?;
        } else {
            tr.finish(&mut out);
            let rest = out.split().freeze();
            session
                .write_response_body(Some(rest), true)
                .await
                .map_err(|e| self.client_cut(ctx, provider, tr.so_far(), e))?;
        }
        self.completed(ctx, provider, tr.usage(), up, pool_key)
            .await;
        Ok(())
    }

    /// A response relayed to its end: its usage accounted, its connection released.
    async fn completed(
        &self,
        ctx: &mut Ctx,
        provider: &Provider,
        usage: Option<Usage>,
        up: Http1Session,
        pool_key: u64,
    ) {
        let m = &self.state.metrics;
        match usage {
            Some(u) => {
                ctx.record.cost =
                    m.record_usage(&provider.name, &ctx.model, &ctx.team, &u, ctx.price);
                ctx.record.usage = Some(u);
            }
            // A call that may cost money but said nothing of its usage: a visible gap,
            // never a silent one. Moderations are free by design; GETs are not LLM calls.
            None if (200..300).contains(&ctx.status)
                && ctx.endpoint != "/v1/moderations"
                && ctx.method_is_post =>
            {
                m.unmetered.with_label_values(&[ctx.endpoint]).inc();
            }
            None => {}
        }
        self.release(up, pool_key).await;
    }

    /// A failed write to the client is a cut by the client, accounted with what went so far.
    fn client_cut(
        &self,
        ctx: &mut Ctx,
        provider: &Provider,
        partial: Usage,
        e: Box<Error>,
    ) -> Failure {
        self.cut("client", ctx, provider, partial);
        Failure::Abort(e)
    }

    /// A connection whose response was read to the end goes back to the pool, unless the
    /// provider asked to close it.
    async fn release(&self, mut up: Http1Session, pool_key: u64) {
        if up.is_body_done() {
            up.respect_keepalive();
            if let Some(stream) = up.reuse().await {
                self.pool.put(pool_key, stream);
            }
        }
    }

    fn upstream_broke(&self, ctx: &mut Ctx, provider: &Provider, partial: Usage, e: &Error) {
        tracing::warn!(
            provider = &*provider.name,
            "upstream broke mid-response: {e}"
        );
        self.cut("upstream", ctx, provider, partial);
    }

    /// The first bytes of a streamed answer reach the client.
    fn first_token(&self, ctx: &mut Ctx, plan: &Plan) {
        let ttft = ctx.start.elapsed();
        ctx.record.ttft = Some(ttft);
        self.state
            .metrics
            .time_to_first_token
            .with_label_values(&[&*plan.route])
            .observe(ttft.as_secs_f64());
    }

    /// A response cut before its end, by `side`: counted, and what was streamed so far
    /// accounted as partial usage.
    fn cut(&self, side: &str, ctx: &mut Ctx, provider: &Provider, partial: Usage) {
        let m = &self.state.metrics;
        m.streams_interrupted.with_label_values(&[side]).inc();
        m.partial_usage
            .with_label_values(&[&*provider.name, &*ctx.model])
            .inc();
        ctx.record.cost =
            m.record_usage(&provider.name, &ctx.model, &ctx.team, &partial, ctx.price);
        ctx.record.usage = Some(partial);
        ctx.record.partial = true;
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

const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
];

/// The client's response headers: the provider's, less hop-by-hop fields, plus the route
/// headers.
fn downstream_headers(
    up: &ResponseHeader,
    plan: &Plan,
    provider: &Provider,
    model: &str,
) -> HeaderMap {
    let mut headers = HeaderMap::with_capacity(up.headers.len() + 4);
    for (name, value) in up.headers.iter() {
        if !HOP_BY_HOP.contains(&name.as_str()) {
            headers.append(name.clone(), value.clone());
        }
    }
    if !headers.contains_key(header::CONTENT_LENGTH) {
        headers.insert(header::TRANSFER_ENCODING, CHUNKED);
    }
    add_route_headers(&mut headers, plan, provider, model);
    headers
}

/// A response header from plain `http` parts. Pingora's own setters copy and re-parse every
/// header name, which on the hot path cost more than all the other header work together.
pub(super) fn response_header(status: StatusCode, headers: HeaderMap) -> ResponseHeader {
    let (mut parts, ()) = http::Response::new(()).into_parts();
    parts.status = status;
    parts.headers = headers;
    ResponseHeader::from(parts)
}

const CHUNKED: HeaderValue = HeaderValue::from_static("chunked");
const COST: HeaderName = HeaderName::from_static("x-switchyard-cost-usd");
const ROUTE: HeaderName = HeaderName::from_static("x-switchyard-route");
const PROVIDER: HeaderName = HeaderName::from_static("x-switchyard-provider");
const MODEL: HeaderName = HeaderName::from_static("x-switchyard-model");

const DECISION: HeaderName = HeaderName::from_static("x-switchyard-decision");

/// Names and labels come from the validated policy; one that is not a valid header value
/// (it cannot be, but a response must not fail over a label) is left out. The decision,
/// when the strategy weighed anything, says why this target.
fn add_route_headers(h: &mut HeaderMap, plan: &Plan, provider: &Provider, model: &str) {
    for (name, value) in [
        (ROUTE, &*plan.route),
        (PROVIDER, &*provider.name),
        (MODEL, model),
    ] {
        if let Ok(v) = HeaderValue::from_str(value) {
            h.insert(name, v);
        }
    }
    if let Some(e) = &plan.explain {
        if let Ok(v) = HeaderValue::from_str(e) {
            h.insert(DECISION, v);
        }
    }
}
