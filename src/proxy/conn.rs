//! The front door: every client connection, before and between its requests.
//!
//! Pingora 0.9 reads a kept-alive connection's next request with no deadline at all
//! (`read_request_buf` waits forever while keep-alive is "infinite", the HTTP/1.1
//! default), gives a trickled header only a per-read timeout, and refuses a bad header
//! with a bare, empty-bodied status. Here a connection may sit idle at most
//! `server.idle_timeout` between requests and must deliver its whole header block within
//! `server.header_timeout`; the block is checked (`head`) and refused in the documented
//! JSON. The bytes read are then handed to Pingora's `HttpProxy` as the session's
//! already-read prefix, so nothing is read or parsed from the socket twice.

use super::head;
use crate::error::{ErrorCode, ProxyError};
use crate::policy::ClientLimits;
use crate::provider::Ingress;
use crate::state::State;
use async_trait::async_trait;
use bytes::BytesMut;
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

/// A header block usually arrives in one read of this size.
const HEAD_BUF: usize = 4096;
/// How long a refusal may take to write, and to drain what the client was still sending.
const REFUSAL_WRITE: Duration = Duration::from_secs(1);
const REFUSAL_DRAIN: Duration = Duration::from_millis(200);
const REFUSAL_DRAIN_BYTES: usize = 256 * 1024;

/// The front door of one listener, in front of the HTTP application that serves it: the
/// proxy (Pingora's `HttpProxy`) or the admin endpoints.
pub struct Front<A> {
    app: Arc<A>,
    state: Arc<State>,
}

impl<A> Front<A> {
    pub fn new(app: A, state: Arc<State>) -> Self {
        Front {
            app: Arc::new(app),
            state,
        }
    }

    fn closed(&self, reason: &str) {
        self.state
            .metrics
            .client_closed
            .with_label_values(&[reason])
            .inc();
    }

    /// Answers a refused header in JSON and closes. A client flooding bad headers costs a
    /// metric and a debug line each, never an error line.
    async fn refuse(&self, stream: &mut Stream, e: &ProxyError, anthropic: bool) {
        let timed_out = e.code == ErrorCode::RequestTimeout;
        self.closed(if timed_out {
            "header_timeout"
        } else {
            "refused"
        });
        self.state
            .metrics
            .errors
            .with_label_values(&[e.code.as_str()])
            .inc();
        tracing::debug!(
            code = e.code.as_str(),
            "refused a request header: {}",
            e.message
        );
        let body = if anthropic {
            e.anthropic_body()
        } else {
            e.body()
        };
        let status = e.status();
        let reason = http::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("Error");
        let mut out = format!(
            "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        out.extend_from_slice(&body);
        let _ = tokio::time::timeout(REFUSAL_WRITE, async {
            stream.write_all(&out).await?;
            stream.flush().await?;
            stream.shutdown().await
        })
        .await;
        if timed_out {
            return;
        }
        // Read (and drop) a little of what the client may still be sending, so the close
        // does not reset the connection before it has read the answer.
        let mut sink = vec![0u8; 16 * 1024];
        let mut left = REFUSAL_DRAIN_BYTES;
        let _ = tokio::time::timeout(REFUSAL_DRAIN, async {
            while left > 0 {
                match stream.read(&mut sink).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => left = left.saturating_sub(n),
                }
            }
        })
        .await;
    }
}

/// What reading a request header block came to.
enum Next {
    /// A complete, acceptable header block (and whatever body bytes came with it).
    Head(BytesMut),
    /// Close without an answer: the client left, or idled past its time, or we are stopping.
    Close(Option<&'static str>),
    /// Answer this error and close.
    Refuse(ProxyError, bool),
}

#[async_trait]
impl<A: HttpServerApp + Send + Sync + 'static> ServerApp for Front<A> {
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let mut reused = false;
        let mut settings = None;
        loop {
            let limits = self.state.policy.load().client;
            let buf = match read_head(&mut stream, &limits, reused, shutdown).await {
                Next::Head(buf) => buf,
                Next::Close(reason) => {
                    if let Some(r) = reason {
                        self.closed(r);
                    }
                    return None;
                }
                Next::Refuse(e, anthropic) => {
                    self.refuse(&mut stream, &e, anthropic).await;
                    return None;
                }
            };
            let mut session = ServerSession::new_http1(stream);
            if let Some(s) = settings.take() {
                pingora::apps::HttpPersistentSettings::apply_to_session(s, &mut session);
            }
            session.set_pipelined_prefix(buf);
            // Per read and per write of a body; body::read also bounds the body as a whole.
            session.set_read_timeout(Some(limits.body_timeout));
            session.set_write_timeout(Some(limits.body_timeout));
            let next = self.app.process_new_http(session, shutdown).await?;
            (stream, settings) = next.consume();
            reused = true;
        }
    }

    async fn cleanup(&self) {
        self.app.http_cleanup().await;
    }
}

/// Reads one request header block: the first byte within the idle timeout (a kept-alive
/// connection) or the header timeout (a new one), the whole block within the header
/// timeout, at most `max_header_bytes`.
async fn read_head(
    stream: &mut Stream,
    limits: &ClientLimits,
    reused: bool,
    shutdown: &ShutdownWatch,
) -> Next {
    let mut buf = BytesMut::with_capacity(HEAD_BUF);
    let start = Instant::now();
    let first_wait = if reused {
        limits.idle_timeout
    } else {
        limits.header_timeout
    };
    let mut stopping = shutdown.clone();
    let first = tokio::select! {
        biased;
        r = tokio::time::timeout(first_wait, stream.read_buf(&mut buf)) => r,
        // A kept-alive connection idling when the process is told to stop is closed now.
        _ = stop_signal(&mut stopping) => return Next::Close(None),
    };
    match first {
        Err(_) if reused => return Next::Close(Some("idle_timeout")),
        Err(_) => return Next::Refuse(timed_out(limits), false),
        // A clean close before a new request is how keep-alive ends.
        Ok(Ok(0)) | Ok(Err(_)) => return Next::Close(None),
        Ok(Ok(_)) => {}
    }
    let deadline = if reused {
        Instant::now() + limits.header_timeout
    } else {
        start + limits.header_timeout
    };
    loop {
        match head::check(&buf) {
            Ok(head::Head::Complete(n)) if n <= limits.max_header_bytes => return Next::Head(buf),
            Ok(head::Head::Partial) if buf.len() < limits.max_header_bytes => {}
            Ok(_) => {
                return Next::Refuse(
                    ProxyError::new(
                        ErrorCode::HeaderTooLarge,
                        format!(
                            "the request header is larger than {} bytes",
                            limits.max_header_bytes
                        ),
                    ),
                    anthropic_client(&buf),
                )
            }
            Err(e) => return Next::Refuse(e, anthropic_client(&buf)),
        }
        if buf.capacity() == buf.len() {
            buf.reserve(HEAD_BUF);
        }
        match tokio::time::timeout_at(deadline, stream.read_buf(&mut buf)).await {
            Err(_) => return Next::Refuse(timed_out(limits), anthropic_client(&buf)),
            Ok(Ok(0)) | Ok(Err(_)) => return Next::Close(Some("client_gone")),
            Ok(Ok(_)) => {}
        }
    }
}

/// Resolves when the process is told to stop; never, if no one can tell it any more.
async fn stop_signal(stopping: &mut ShutdownWatch) {
    if stopping.wait_for(|stop| *stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}

fn timed_out(limits: &ClientLimits) -> ProxyError {
    ProxyError::new(
        ErrorCode::RequestTimeout,
        format!(
            "the request header did not arrive within {:?}",
            limits.header_timeout
        ),
    )
}

/// Whether a (possibly partial) header block is for Anthropic's `/v1/messages`, so a
/// refusal takes Anthropic's error shape.
fn anthropic_client(buf: &[u8]) -> bool {
    let line = buf.split(|&b| b == b'\n').next().unwrap_or(b"");
    let Some(target) = line.split(|&b| b == b' ').nth(1) else {
        return false;
    };
    let path = match target.iter().position(|&b| b == b'/') {
        // Absolute form: skip `scheme://authority`.
        Some(_) if !target.starts_with(b"/") => {
            let rest = target.splitn(4, |&b| b == b'/').nth(3).unwrap_or(b"");
            return std::str::from_utf8(rest)
                .is_ok_and(|p| Ingress::of_path(&format!("/{p}")) == Ingress::Anthropic);
        }
        _ => target,
    };
    std::str::from_utf8(path).is_ok_and(|p| Ingress::of_path(p) == Ingress::Anthropic)
}

#[cfg(test)]
mod tests {
    use super::anthropic_client;

    #[test]
    fn refusals_take_the_clients_shape() {
        assert!(anthropic_client(b"POST /v1/messages HTTP/1.1\r\nHo"));
        assert!(anthropic_client(
            b"POST http://api.anthropic.com/v1/messages?beta=true HTTP/1.1\r\n"
        ));
        assert!(!anthropic_client(b"POST /v1/chat/completions HTTP/1.1\r\n"));
        assert!(!anthropic_client(b"GARBAGE"));
    }
}
