//! Which failed tries may be tried again, how many retries a service port
//! may add ([`Budget`]), and the request body that makes a retry possible
//! ([`ReplayBody`]).
//!
//! A request is tried again only when that cannot do what the client did
//! not ask for: its body must still be whole (empty, or never read by the
//! connection that failed), and once the request may have reached the
//! endpoint (a reset before the response head, a per-try timeout) only an
//! idempotent method is sent again. A connect failure (nothing sent) and a
//! 503 (the endpoint says it did not process the request) are retried for
//! any method whose body is whole.

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::Method;
use hyper::body::{Body, Frame, SizeHint};

use super::RequestBody;

/// RFC 9110 §9.2.2: methods a client may send twice to the same effect.
pub fn is_idempotent(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE)
}

/// Seconds of requests and retries a [`Budget`] remembers.
pub const WINDOW_SECS: u64 = WINDOW as u64;
/// [`WINDOW_SECS`] as a count of buckets.
const WINDOW: usize = 10;

/// A service port's retry budget, like linkerd's and Envoy's: over the last
/// [`WINDOW_SECS`] seconds, retries may add `ratio` of the requests plus
/// `min_per_second` per second, so a failing service gets a bounded extra
/// load from retries rather than a multiple of its traffic.
///
/// Pure: the caller passes the current second.
#[derive(Debug)]
pub struct Budget {
    ratio: f64,
    min_per_second: u32,
    /// One bucket per second of the window, indexed by `second % WINDOW_SECS`.
    buckets: [Bucket; WINDOW],
}

#[derive(Debug, Default, Clone, Copy)]
struct Bucket {
    second: u64,
    requests: u32,
    retries: u32,
}

impl Budget {
    pub fn new(ratio: f64, min_per_second: u32) -> Self {
        Self { ratio: ratio.max(0.0), min_per_second, buckets: [Bucket::default(); WINDOW] }
    }

    /// A request arrived during `second`.
    pub fn deposit(&mut self, second: u64) {
        let b = self.bucket(second);
        b.requests = b.requests.saturating_add(1);
    }

    /// Whether a retry may be sent during `second`; if so it is counted.
    pub fn withdraw(&mut self, second: u64) -> bool {
        let (mut requests, mut retries) = (0u64, 0u64);
        for b in &self.buckets {
            if b.second + WINDOW_SECS > second && b.second <= second {
                requests += u64::from(b.requests);
                retries += u64::from(b.retries);
            }
        }
        let allowed = self.ratio * requests as f64 + f64::from(self.min_per_second) * WINDOW_SECS as f64;
        if retries as f64 + 1.0 > allowed {
            return false;
        }
        let b = self.bucket(second);
        b.retries = b.retries.saturating_add(1);
        true
    }

    fn bucket(&mut self, second: u64) -> &mut Bucket {
        let b = &mut self.buckets[(second % WINDOW_SECS) as usize];
        if b.second != second {
            *b = Bucket { second, ..Bucket::default() };
        }
        b
    }
}

/// The client's request body, handed to one try at a time. Until a try
/// reads it, the body stays in a slot the dispatcher shares, so a try that
/// failed before reading it (connect failure, stale pooled connection, a
/// 503 before the body was wanted) leaves it whole for the next one.
pub struct ReplayBody {
    /// The body, once this try read from it.
    taken: Option<RequestBody>,
    /// The body not read yet; `None` for an empty body.
    slot: Option<Arc<Mutex<Option<RequestBody>>>>,
}

/// The shared slot of a request's body.
#[derive(Clone)]
pub struct BodySlot {
    /// `None` when the request has no body: every try gets an empty one.
    slot: Option<Arc<Mutex<Option<RequestBody>>>>,
}

impl ReplayBody {
    /// An empty body.
    pub fn empty() -> Self {
        Self { taken: None, slot: None }
    }
}

impl BodySlot {
    pub fn new(body: RequestBody) -> Self {
        let slot = (!body.is_end_stream()).then(|| Arc::new(Mutex::new(Some(body))));
        Self { slot }
    }

    /// The body for the next try.
    pub fn body(&self) -> ReplayBody {
        ReplayBody { taken: None, slot: self.slot.clone() }
    }

    /// Whether the request has no body at all.
    pub fn is_empty(&self) -> bool {
        self.slot.is_none()
    }

    /// Whether the body can still be sent in full (it is empty, or no try
    /// read any of it).
    pub fn is_whole(&self) -> bool {
        self.slot.as_ref().is_none_or(|s| lock(s).is_some())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Body for ReplayBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        if this.taken.is_none() {
            match this.slot.take() {
                Some(slot) => this.taken = lock(&slot).take(),
                None => return Poll::Ready(None),
            }
        }
        match this.taken.as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match (&self.taken, &self.slot) {
            (Some(body), _) => body.is_end_stream(),
            (None, Some(slot)) => lock(slot).as_ref().is_none_or(Body::is_end_stream),
            (None, None) => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.taken, &self.slot) {
            (Some(body), _) => body.size_hint(),
            (None, Some(slot)) => lock(slot).as_ref().map_or_else(|| SizeHint::with_exact(0), Body::size_hint),
            (None, None) => SizeHint::with_exact(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_idempotent_methods_are_sent_twice_after_reaching_the_endpoint() {
        for m in [Method::GET, Method::HEAD, Method::OPTIONS, Method::TRACE, Method::PUT, Method::DELETE] {
            assert!(is_idempotent(&m), "{m}");
        }
        for m in [Method::POST, Method::PATCH, Method::CONNECT] {
            assert!(!is_idempotent(&m), "{m}");
        }
    }

    #[test]
    fn the_budget_allows_the_minimum_per_second_when_idle() {
        let mut b = Budget::new(0.2, 1);
        // 1 per second over a 10 s window: 10 retries, then none.
        assert_eq!((0..20).filter(|_| b.withdraw(100)).count(), 10);
        // They leave the window 10 s later.
        assert!(!b.withdraw(109));
        assert!(b.withdraw(110));
    }

    #[test]
    fn the_budget_grows_with_the_requests_of_the_window() {
        let mut b = Budget::new(0.2, 0);
        for s in 0..10 {
            for _ in 0..100 {
                b.deposit(s);
            }
        }
        // 1000 requests in the window: 20% of them.
        assert_eq!((0..1000).filter(|_| b.withdraw(9)).count(), 200);
        // Ten seconds on, the requests are out of the window as well.
        assert!(!b.withdraw(20));
    }

    #[test]
    fn a_zero_budget_refuses_every_retry() {
        let mut b = Budget::new(0.0, 0);
        b.deposit(0);
        assert!(!b.withdraw(0));
    }
}
