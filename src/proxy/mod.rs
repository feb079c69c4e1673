//! The proxy: Pingora's `ProxyHttp` phases. LLM calls are owned end to end by
//! `request_filter` (accept → read → route → rewrite → forward → stream back, see
//! `exchange`); passthrough hosts go down Pingora's ordinary proxy phases untouched.

pub mod accept;
mod account;
mod admit;
mod batch;
mod body;
mod conn;
mod exchange;
pub mod head;
mod relay;

use crate::error::{ErrorCode, ProxyError};
use crate::policy::{HostRule, Policy};
use crate::rewrite;
use crate::route::{self, RouteInput};
use crate::state::{InFlight, State};
use crate::upstream::{self, Pool, Resolver};
use async_trait::async_trait;
use bytes::Bytes;
use http::header;
use pingora::connectors::{ConnectorOptions, TransportConnector};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use conn::Front;
pub use exchange::LlmRequest;

pub struct Switchyard {
    state: Arc<State>,
    /// The label of what is not known yet; shared so a new request allocates nothing.
    none: Arc<str>,
    /// New upstream connections (TCP, TLS); idle ones are kept in `pool`, not Pingora's.
    transport: TransportConnector,
    pool: Arc<Pool>,
    resolver: Resolver,
}

impl Switchyard {
    pub fn new(state: Arc<State>, options: ConnectorOptions, pool: Arc<Pool>) -> Self {
        Switchyard {
            state,
            none: Arc::from("none"),
            transport: TransportConnector::new(Some(options)),
            pool,
            resolver: Resolver::default(),
        }
    }
}

/// Labels of the request for metrics, filled in as the walk learns them.
pub struct Ctx {
    _in_flight: Option<InFlight>,
    start: Instant,
    /// Set for passthrough hosts: Pingora's own phases forward the request.
    passthrough: Option<(String, u16)>,
    route: Arc<str>,
    provider: Arc<str>,
    model: Arc<str>,
    team: Arc<str>,
    /// Price of the attempt being relayed, for cost accounting.
    price: Option<crate::price::Price>,
    /// The client speaks Anthropic's API (`/v1/messages`): errors in its shape.
    anthropic_client: bool,
    /// The endpoint, as a bounded label (`telemetry::endpoint_label`).
    endpoint: &'static str,
    method_is_post: bool,
    status: u16,
    /// Start of the current stretch of proxy-side work (None while waiting on a peer).
    mark: Option<Instant>,
    /// Time spent in the proxy itself, upstream and client waits excluded.
    overhead: Duration,
    /// The request body's share of `server.max_body_memory_bytes`, held until the end.
    body_memory: Option<tokio::sync::OwnedSemaphorePermit>,
    /// What the usage event reports, filled in as the walk learns it (see `account`).
    pub(crate) record: account::Record,
    /// Who is calling, when the policy governs anything.
    caller: Option<crate::governance::Caller>,
    /// The admitted request's hold on its budgets and rate windows, settled in `logging`.
    ticket: Option<crate::governance::Ticket>,
}

impl Ctx {
    /// Ends a stretch of proxy-side work (before waiting on the upstream or the client).
    pub(crate) fn pause(&mut self) {
        if let Some(m) = self.mark.take() {
            self.overhead += m.elapsed();
        }
    }

    /// Starts a stretch of proxy-side work.
    pub(crate) fn resume(&mut self) {
        self.mark = Some(Instant::now());
    }
}

#[async_trait]
impl ProxyHttp for Switchyard {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            _in_flight: None,
            start: Instant::now(),
            passthrough: None,
            route: self.none.clone(),
            provider: self.none.clone(),
            model: self.none.clone(),
            team: self.none.clone(),
            price: None,
            anthropic_client: false,
            endpoint: "other",
            method_is_post: false,
            status: 0,
            mark: None,
            overhead: Duration::ZERO,
            body_memory: None,
            record: account::Record::default(),
            caller: None,
            ticket: None,
        }
    }

    /// No downstream modules: responses are relayed as the provider sent them, and the
    /// (disabled) compression module Pingora adds by default still costs per request.
    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        ctx._in_flight = Some(InFlight::new(&self.state.metrics.in_flight));
        ctx.start = Instant::now();
        // One snapshot for the whole request, however many reloads happen meanwhile.
        let policy = self.state.policy.load_full();
        ctx.team = policy.team.clone();
        let result = self.handle(session, ctx, &policy).await;
        ctx.record.policy = Some(policy);
        match result {
            Ok(Handled::Done) => Ok(true),
            Ok(Handled::Passthrough) => Ok(false),
            Err(Failure::Answer(e)) => {
                self.send_error(session, ctx, &e).await?;
                Ok(true)
            }
            Err(Failure::Abort(e)) => Err(e),
        }
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let Some((host, port)) = &ctx.passthrough else {
            return Error::e_explain(InternalError, "no upstream chosen for this request");
        };
        let addr = self
            .resolver
            .resolve(host, *port)
            .await
            .map_err(|m| Error::explain(ConnectNoRoute, m))?;
        Ok(Box::new(upstream::peer_at(
            addr,
            false,
            host,
            Duration::from_secs(5),
        )))
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        _ctx: &mut Ctx,
    ) -> Result<()> {
        // Proxy credentials are for this hop only, and so is whatever `Connection` names.
        upstream_request.remove_header(&header::PROXY_AUTHORIZATION);
        upstream_request.remove_header("proxy-connection");
        for name in rewrite::connection_named(&upstream_request.headers) {
            upstream_request.remove_header(&name);
        }
        Ok(())
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        // Once a response has started, the only honest signal left is to cut the connection.
        if session.response_written().is_some() {
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        }
        let code = match e.etype() {
            ConnectTimedout | ReadTimedout | WriteTimedout => ErrorCode::UpstreamTimeout,
            _ if e.esource() == &ErrorSource::Upstream => ErrorCode::UpstreamUnavailable,
            _ if e.esource() == &ErrorSource::Downstream => ErrorCode::InvalidRequest,
            _ => ErrorCode::UpstreamUnavailable,
        };
        let err = ProxyError::new(code, e.etype().as_str().to_string());
        if self.send_error(session, ctx, &err).await.is_err() {
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        }
        FailToProxy {
            error_code: err.status(),
            can_reuse_downstream: false,
        }
    }

    /// A client that goes away or stalls is routine for a proxy, and one that does it on
    /// purpose must not be able to flood the log: those failures are counted
    /// (`switchyard_client_connections_closed_total`) and logged at debug level only.
    fn suppress_error_log(&self, _session: &Session, _ctx: &Ctx, e: &Error) -> bool {
        if e.esource() != &ErrorSource::Downstream {
            return false;
        }
        let reason = match e.etype() {
            ReadTimedout => "body_timeout",
            WriteTimedout => "write_timeout",
            _ => "client_gone",
        };
        self.state
            .metrics
            .client_closed
            .with_label_values(&[reason])
            .inc();
        tracing::debug!("client connection failed: {e}");
        true
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut Ctx) {
        let m = &self.state.metrics;
        let status = session
            .response_written()
            .map_or(ctx.status, |r| r.status.as_u16());
        let mut buf = itoa_buf();
        let status = status_str(status, &mut buf);
        if ctx.passthrough.is_some() {
            m.passthrough_requests.with_label_values(&[status]).inc();
            return;
        }
        m.requests
            .with_label_values(&[&*ctx.route, &*ctx.provider, &*ctx.model, status])
            .inc();
        self.settle(ctx);
        if let Some(events) = self.state.events.get() {
            let status = session
                .response_written()
                .map_or(ctx.status, |r| r.status.as_u16());
            if let Some(event) = account::event(ctx, status) {
                events.record(event);
            }
        }
        m.request_duration
            .with_label_values(&[&*ctx.route])
            .observe(ctx.start.elapsed().as_secs_f64());
        if !ctx.overhead.is_zero() {
            m.proxy_overhead
                .with_label_values(&[&*ctx.route])
                .observe(ctx.overhead.as_secs_f64());
        }
    }
}

fn itoa_buf() -> [u8; 3] {
    [b'0'; 3]
}

/// Status codes as label text without allocating.
fn status_str(status: u16, buf: &mut [u8; 3]) -> &str {
    if !(100..1000).contains(&status) {
        return "0";
    }
    buf[0] = b'0' + (status / 100) as u8;
    buf[1] = b'0' + (status / 10 % 10) as u8;
    buf[2] = b'0' + (status % 10) as u8;
    std::str::from_utf8(buf).unwrap_or("0")
}

pub(crate) enum Handled {
    /// The response was sent.
    Done,
    /// Let Pingora's phases proxy it (passthrough host).
    Passthrough,
}

pub(crate) enum Failure {
    /// Answer the client with this error (nothing was sent yet).
    Answer(ProxyError),
    /// The exchange broke after the response started: cut the connection.
    Abort(Box<Error>),
}

impl From<ProxyError> for Failure {
    fn from(e: ProxyError) -> Self {
        Failure::Answer(e)
    }
}

impl Switchyard {
    async fn handle(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        policy: &Policy,
    ) -> std::result::Result<Handled, Failure> {
        let target = accept::target(session.req_header())
            .map_err(|m| ProxyError::new(ErrorCode::InvalidRequest, m))?;
        let path_and_query = target.path_and_query.to_string();
        ctx.anthropic_client = crate::provider::Ingress::of_path(&path_and_query)
            == crate::provider::Ingress::Anthropic;
        ctx.endpoint = crate::telemetry::endpoint_label(accept::path_only(&path_and_query));
        ctx.method_is_post = session.req_header().method == http::Method::POST;
        let mut host_provider = None;
        let host = match target.host {
            Some(h) => {
                let h = h.to_ascii_lowercase();
                match policy.host_rule(&h) {
                    Some(HostRule::Passthrough { host, port }) => {
                        ctx.passthrough = Some((host.clone(), *port));
                        return Ok(Handled::Passthrough);
                    }
                    Some(HostRule::Provider(p)) => host_provider = Some(*p),
                    None => {
                        return Err(ProxyError::new(
                            ErrorCode::HostNotAllowed,
                            format!(
                                "host {:?} is not a configured provider or passthrough host",
                                crate::error::clip(&h)
                            ),
                        )
                        .into())
                    }
                }
                Some(h)
            }
            None => None,
        };

        // Identify the caller before reading a byte of the body.
        self.identify(session, ctx, policy)?;

        let method = session.req_header().method.clone();
        if host.is_none()
            && method == http::Method::GET
            && accept::path_only(&path_and_query) == "/v1/models"
        {
            ctx.record.local = true;
            let body = exchange::catalog_listing(policy);
            self.send_json(session, ctx, 200, body)
                .await
                .map_err(Failure::Abort)?;
            return Ok(Handled::Done);
        }

        let read = body::read(
            session,
            policy.max_body_bytes,
            &self.state.body_memory,
            policy.client.body_timeout,
        )
        .await?;
        ctx.body_memory = read.memory;
        let body = read.bytes;
        // From here until the upstream is asked, the time is the proxy's own.
        ctx.mark = Some(Instant::now());
        let probe = if body.is_empty() {
            None
        } else {
            rewrite::probe(&body)?
        };

        let path = accept::path_only(&path_and_query);
        let headers = &session.req_header().headers;
        let route_input = |model, max_tokens| RouteInput {
            model,
            host: host.as_deref(),
            host_provider,
            path,
            headers,
            body: &body,
            max_tokens,
            input_tokens: None,
            score: None,
        };
        let seen = &self.state.observed;
        let planned = match (&probe, host_provider) {
            (Some(p), _) => route::plan(policy, seen, &route_input(&p.model, p.max_tokens)),
            // A model-less call to a provider's own host (GET /v1/models, files…) goes to it.
            (None, Some(p)) => Ok(exchange::direct_plan(p)),
            (None, None) => {
                return Err(ProxyError::new(
                    ErrorCode::InvalidRequest,
                    format!(
                    "{method} {} carries no `model`; Switchyard routes by the request body's model",
                    crate::error::clip(path)
                ),
                )
                .into())
            }
        };
        if let Some(p) = &probe {
            // The catalog's own name when the client asked for one of the plan's targets (the
            // usual case): nothing allocated here and freed on the spool writer's thread.
            let named = planned.as_ref().ok().and_then(|plan| {
                plan.attempts
                    .iter()
                    .find(|a| *a.model_label == *p.model)
                    .map(|a| a.model_label.clone())
            });
            ctx.record.requested_model = Some(named.unwrap_or_else(|| Arc::from(p.model.as_str())));
            ctx.record.stream = p.stream;
        }
        let plan = planned?;
        let plan = match &probe {
            Some(p) => {
                self.admit(ctx, policy, p, body.len(), plan, |to| {
                    let input = RouteInput {
                        model: to,
                        host: host.as_deref(),
                        host_provider,
                        path,
                        headers,
                        body: &body,
                        max_tokens: p.max_tokens,
                        input_tokens: None,
                        score: None,
                    };
                    route::plan_downgrade(policy, seen, to, &input)
                })
                .await?
            }
            None => plan,
        };
        let req = LlmRequest {
            path_and_query,
            body,
            probe,
        };
        self.forward(session, ctx, policy, &req, &plan).await?;
        Ok(Handled::Done)
    }

    async fn send_error(&self, session: &mut Session, ctx: &mut Ctx, e: &ProxyError) -> Result<()> {
        ctx.record.error_code = Some(e.code);
        self.state
            .metrics
            .errors
            .with_label_values(&[e.code.as_str()])
            .inc();
        if e.status() >= 500 {
            tracing::warn!(code = e.code.as_str(), "{}", e.message);
        } else {
            tracing::debug!(code = e.code.as_str(), "{}", e.message);
        }
        let body = if ctx.anthropic_client {
            e.anthropic_body()
        } else {
            e.body()
        };
        // Memory pressure passes quickly: tell SDKs (which honour it) to come back soon.
        let retry_after = match (e.retry_after, e.code) {
            (Some(secs), _) => Some(secs.to_string()),
            (None, ErrorCode::Overloaded) => Some("1".to_string()),
            (None, _) => None,
        };
        self.send_json_with(session, ctx, e.status(), body, retry_after.as_deref())
            .await
    }

    async fn send_json(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        status: u16,
        body: Bytes,
    ) -> Result<()> {
        self.send_json_with(session, ctx, status, body, None).await
    }

    async fn send_json_with(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        status: u16,
        body: Bytes,
        retry_after: Option<&str>,
    ) -> Result<()> {
        ctx.status = status;
        let mut h = ResponseHeader::build_no_case(status, Some(4))?;
        h.insert_header(header::CONTENT_TYPE, "application/json")?;
        h.insert_header(header::CONTENT_LENGTH, body.len().to_string())?;
        if let Some(secs) = retry_after {
            h.insert_header(header::RETRY_AFTER, secs)?;
        }
        // The request body may be unread (rejected early): do not reuse the connection.
        if status >= 400 {
            session.set_keepalive(None);
        }
        session.write_response_header(Box::new(h), false).await?;
        session.write_response_body(Some(body), true).await
    }
}
