//! Load shedding's permit: one of `limits.max_in_flight`, held by the response body (and, for a stream,
//! by the task writing it) so that a request counts until its last byte. Whichever ends first gives it
//! back: the body, or the stream's task (which may end while a stalled client keeps the body alive).
//! A leaf: it knows nothing of requests or backends.

use std::sync::{Arc, Mutex, PoisonError};

use axum::body::{Body, Bytes};
use axum::response::Response;
use tokio::sync::OwnedSemaphorePermit;

/// An in-flight permit that whichever ends first gives back.
#[derive(Clone)]
pub struct PermitSlot(Arc<Mutex<Option<OwnedSemaphorePermit>>>);

impl PermitSlot {
    pub fn new(permit: OwnedSemaphorePermit) -> Self {
        Self(Arc::new(Mutex::new(Some(permit))))
    }

    pub fn release(&self) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take();
    }
}

/// Keeps the permit until the response body has been sent or dropped.
pub fn hold_until_body_ends(response: Response, slot: PermitSlot) -> Response {
    response.map(|inner| Body::new(PermitBody { inner, slot }))
}

/// A body that holds an in-flight permit. It passes on the inner body's size, so a JSON answer keeps its
/// `Content-Length` and goes out in one write with its headers.
struct PermitBody {
    inner: Body,
    slot: PermitSlot,
}

impl Drop for PermitBody {
    fn drop(&mut self) {
        self.slot.release();
    }
}

impl http_body::Body for PermitBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
