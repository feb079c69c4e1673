//! Step 6 of the walk: the chosen upstream's answer streamed back to the client as it is
//! read — relayed byte for byte (usage scanned on the side) or translated from another
//! wire format — with usage, cost, time to first token and cut streams accounted.

use super::{Ctx, Failure, Switchyard};
use crate::error::{ErrorCode, ProxyError};
use crate::policy::Provider;
use crate::provider::Translator;
use crate::route::Plan;
use crate::usage::{JsonTail, SseScanner, Usage};
use bytes::{Bytes, BytesMut};
use http::header;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::protocols::http::client::HttpSession;
use pingora::proxy::Session;
use std::time::{Duration, Instant};

/// How long an upstream connection may sit idle in the pool.
const POOL_IDLE: Duration = Duration::from_secs(60);
/// Largest non-streamed provider response collected for translation.
const MAX_TRANSLATED_BODY: usize = 64 << 20;

impl Switchyard {
    /// Streams the upstream response to the client as it arrives.
    pub(super) async fn relay(
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
    pub(super) async fn relay_translated(
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
                self.cut("client", ctx, provider, tr.so_far());
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
                            self.cut("client", ctx, provider, tr.so_far());
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
                    self.cut("upstream", ctx, provider, tr.so_far());
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
                self.cut("client", ctx, provider, tr.so_far());
                return Err(Failure::Abort(e));
            }
            if let Err(e) = session.write_response_body(Some(translated), true).await {
                self.cut("client", ctx, provider, tr.so_far());
                return Err(Failure::Abort(e));
            }
        } else {
            tr.finish(&mut out);
            let rest = out.split().freeze();
            let write = session.write_response_body(Some(rest), true).await;
            if let Err(e) = write {
                self.cut("client", ctx, provider, tr.so_far());
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
