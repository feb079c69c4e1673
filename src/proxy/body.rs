//! Step 2: reading the request body, bounded. The whole body is held because every
//! attempt (and every fallback) needs its own rewritten copy of it.

use crate::error::{ErrorCode, ProxyError};
use crate::proxy::Failure;
use bytes::{Bytes, BytesMut};
use http::header;
use pingora::prelude::ReadTimedout;
use pingora::proxy::Session;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// After a body overflowed the limit, how much more is read and discarded (bounded in size
/// and time) so the client, still sending, can read the 413 instead of a broken pipe.
const DRAIN_BYTES: u64 = 8 << 20;
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(1);

async fn drain(session: &mut Session) {
    let mut left = DRAIN_BYTES;
    let _ = tokio::time::timeout(DRAIN_TIME, async {
        while let Ok(Some(chunk)) = session.read_request_body().await {
            left = left.saturating_sub(chunk.len() as u64);
            if left == 0 {
                break;
            }
        }
    })
    .await;
}

fn too_large(limit: u64) -> ProxyError {
    ProxyError::new(
        ErrorCode::PayloadTooLarge,
        format!("request body is larger than the {limit}-byte limit"),
    )
}

/// A request body read whole, with the share of `server.max_body_memory_bytes` it holds
/// (released when the request ends).
pub struct ReadBody {
    pub bytes: Bytes,
    pub memory: Option<OwnedSemaphorePermit>,
}

fn overloaded() -> ProxyError {
    ProxyError::new(
        ErrorCode::Overloaded,
        "too many request bodies are being read at once; retry shortly",
    )
}

/// Reads the whole body within `deadline`, at most `limit` bytes, each byte counted against
/// the process-wide body memory. A body that would overflow that memory is refused (503,
/// `Retry-After`) rather than waited for: waiting would hold the client's connection and
/// what it already sent.
pub async fn read(
    session: &mut Session,
    limit: u64,
    memory: &Arc<Semaphore>,
    deadline: Duration,
) -> Result<ReadBody, Failure> {
    let declared = session
        .req_header()
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large(limit).into());
    }
    // A declared length is reserved up front: a client cannot get memory it was not given.
    let mut permit = match declared {
        Some(0) | None => None,
        Some(n) => Some(
            memory
                .clone()
                .try_acquire_many_owned(n as u32)
                .map_err(|_| overloaded())?,
        ),
    };
    let expects_continue = session
        .req_header()
        .headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if expects_continue {
        // Without this, clients that send large bodies (curl > 1 MiB) stall for a second.
        session
            .write_continue_response()
            .await
            .map_err(Failure::Abort)?;
    }
    let reserved = declared.unwrap_or(0);
    let read = read_all(session, limit, declared, reserved, memory, &mut permit);
    let bytes = match tokio::time::timeout(deadline, read).await {
        Ok(r) => r?,
        Err(_) => {
            return Err(ProxyError::new(
                ErrorCode::RequestTimeout,
                format!("the request body did not arrive within {deadline:?}"),
            )
            .into())
        }
    };
    Ok(ReadBody {
        bytes,
        memory: permit,
    })
}

async fn read_all(
    session: &mut Session,
    limit: u64,
    declared: Option<u64>,
    reserved: u64,
    memory: &Arc<Semaphore>,
    permit: &mut Option<OwnedSemaphorePermit>,
) -> Result<Bytes, Failure> {
    // The common case is a single chunk: keep it without copying.
    let mut first: Option<Bytes> = None;
    let mut buf = BytesMut::new();
    let mut total: u64 = 0;
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                total += chunk.len() as u64;
                if total > limit {
                    drain(session).await;
                    return Err(too_large(limit).into());
                }
                // Bytes beyond what was reserved (a chunked body) are reserved as they come.
                if total > reserved {
                    let more = (total - reserved).min(chunk.len() as u64) as u32;
                    let p = memory
                        .clone()
                        .try_acquire_many_owned(more)
                        .map_err(|_| overloaded())?;
                    match permit {
                        Some(held) => held.merge(p),
                        None => *permit = Some(p),
                    }
                }
                match first.take() {
                    None if buf.is_empty() => first = Some(chunk),
                    prev => {
                        if let Some(prev) = prev {
                            buf.reserve(declared.unwrap_or(total).min(limit) as usize);
                            buf.extend_from_slice(&prev);
                        }
                        buf.extend_from_slice(&chunk);
                    }
                }
            }
            Ok(None) => return Ok(first.unwrap_or_else(|| buf.freeze())),
            Err(e) if matches!(e.etype(), ReadTimedout) => {
                return Err(ProxyError::new(
                    ErrorCode::RequestTimeout,
                    "the client stopped sending its request body",
                )
                .into())
            }
            Err(e) => {
                return Err(ProxyError::new(
                    ErrorCode::InvalidRequest,
                    format!("failed to read the request body: {}", e.etype().as_str()),
                )
                .into())
            }
        }
    }
}
