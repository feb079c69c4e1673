//! Reading a provider's response body in batches: the next piece, waited for, and then every
//! piece that has already arrived. A fast provider sends SSE events back to back, and Pingora
//! hands a chunked body over one chunk at a time; written to the client one by one, each
//! event cost a send and, on loopback, the reader's wakeup (22 sends per 16-chunk stream,
//! where nginx made 2). Nothing is held back: only what is already here is added.

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use pingora::prelude::*;
use pingora::protocols::http::v1::client::HttpSession as Http1Session;

/// A batch stops growing at this size; the rest goes in the next write.
const BATCH_MAX: usize = 64 * 1024;

/// How a batch ended.
pub(super) struct BatchEnd {
    /// The body is complete after this batch.
    pub end: bool,
    /// The upstream broke right after this batch: send what came, then cut.
    pub broke: Option<Box<Error>>,
}

/// Waits for the next piece of the body and hands it to `piece`, then hands over every piece
/// already buffered or readable without waiting again. `Ok(None)`: the body had ended.
pub(super) async fn read_batch(
    up: &mut Http1Session,
    mut piece: impl FnMut(Bytes),
) -> Result<Option<BatchEnd>> {
    let Some(first) = up.read_body_bytes().await? else {
        return Ok(None);
    };
    let mut size = first.len();
    piece(first);
    // The read timeout is for waiting; a poll that cannot wait must not arm its timer.
    let timeout = up.read_timeout.take();
    let mut done = BatchEnd {
        end: false,
        broke: None,
    };
    while size < BATCH_MAX {
        // `unconstrained`: tokio's budget must not make a ready read look pending. A read
        // that is pending has consumed nothing, so dropping it loses nothing.
        match tokio::task::unconstrained(up.read_body_bytes()).now_or_never() {
            None => break,
            Some(Ok(Some(more))) => {
                size += more.len();
                piece(more);
            }
            Some(Ok(None)) => {
                done.end = true;
                break;
            }
            Some(Err(e)) => {
                done.broke = Some(e);
                break;
            }
        }
    }
    up.read_timeout = timeout;
    Ok(Some(done))
}

/// The bytes of one batch: the first piece as it came, copied together only if more follow.
#[derive(Default)]
pub(super) struct Batch {
    first: Option<Bytes>,
    more: Option<BytesMut>,
}

impl Batch {
    pub fn push(&mut self, piece: Bytes) {
        match (&self.first, &mut self.more) {
            (None, _) => self.first = Some(piece),
            (Some(_), Some(more)) => more.extend_from_slice(&piece),
            (Some(first), None) => {
                let mut more = BytesMut::with_capacity((first.len() + piece.len()) * 2);
                more.extend_from_slice(first);
                more.extend_from_slice(&piece);
                self.more = Some(more);
            }
        }
    }

    pub fn take(&mut self) -> Bytes {
        let first = self.first.take();
        match self.more.take() {
            Some(more) => more.freeze(),
            None => first.unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_single_piece_is_not_copied_and_more_are_joined() {
        let mut b = Batch::default();
        let one = Bytes::from_static(b"data: 1\n\n");
        b.push(one.clone());
        let out = b.take();
        assert_eq!(out.as_ptr(), one.as_ptr());
        b.push(one.clone());
        b.push(Bytes::from_static(b"data: 2\n\n"));
        b.push(Bytes::from_static(b"data: 3\n\n"));
        assert_eq!(&b.take()[..], b"data: 1\n\ndata: 2\n\ndata: 3\n\n");
        assert!(b.take().is_empty());
    }
}
