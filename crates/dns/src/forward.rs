//! Forwarding to the upstream resolvers.
//!
//! Each question goes out in a fresh query (random ID, random source port,
//! RD, EDNS 1232) on a *connected* UDP socket, so an ICMP port unreachable
//! surfaces at once as "connection refused" instead of a timeout. A
//! truncated reply is asked again over TCP. On any failure (refused,
//! silence, SERVFAIL/REFUSED from the upstream, garbage) the next upstream
//! gets the rest of the time; the whole exchange never exceeds the
//! configured timeout.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::timeout_at;

use crate::metrics::{ForwardMetrics, UpstreamMetrics};
use crate::throttle::WarnEvery;

/// EDNS payload size we advertise upstream (the DNS flag day 2020 value).
pub const UPSTREAM_PAYLOAD: u16 = 1232;

/// Why one upstream did not answer.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("no answer within the time left ({0:?}); is the resolver reachable from this node?")]
    Timeout(Duration),
    #[error("{0}; is a resolver listening there?")]
    Io(#[from] io::Error),
    #[error("answered {0}")]
    Rcode(ResponseCode),
    #[error("sent an unreadable or mismatched reply over TCP")]
    BadReply,
}

/// The upstream side: a list of resolvers and a time budget.
#[derive(Debug)]
pub struct Forwarder {
    /// Loaded once per forwarded query; replaced by a reload ([`Forwarder::set`]).
    upstreams: ArcSwap<Upstreams>,
    /// Where a new upstream's metrics are made (set by [`Forwarder::with_metrics`]).
    families: ForwardMetrics,
    /// Failures are logged at warn at most once per [`WARN_EVERY`].
    warn: WarnEvery,
}

const WARN_EVERY: Duration = Duration::from_secs(30);

/// The resolvers, tried in order, their metrics, and the time for all of them.
#[derive(Debug)]
struct Upstreams {
    list: Vec<SocketAddr>,
    /// Per upstream, in the same order.
    metrics: Vec<UpstreamMetrics>,
    timeout: Duration,
}

impl Upstreams {
    fn new(list: Vec<SocketAddr>, timeout: Duration, families: &ForwardMetrics) -> Self {
        let metrics = list.iter().map(|to| families.upstream(*to)).collect();
        Self { list, metrics, timeout }
    }
}

impl Forwarder {
    pub fn new(upstreams: Vec<SocketAddr>, timeout: Duration) -> Self {
        let families = ForwardMetrics::default();
        let upstreams = ArcSwap::from_pointee(Upstreams::new(upstreams, timeout, &families));
        Self { upstreams, families, warn: WarnEvery::new(WARN_EVERY) }
    }

    /// Counts requests, responses and their durations per upstream into
    /// `metrics` (from zero), also for the upstreams a reload brings.
    pub(crate) fn with_metrics(mut self, metrics: &ForwardMetrics) -> Self {
        let current = self.upstreams.load_full();
        self.families = metrics.clone();
        self.upstreams.store(Arc::new(Upstreams::new(current.list.clone(), current.timeout, &self.families)));
        self
    }

    pub fn upstreams(&self) -> Vec<SocketAddr> {
        self.upstreams.load().list.clone()
    }

    /// Replaces the resolvers and the time budget for the queries to come
    /// (those under way finish with the old ones).
    pub fn set(&self, upstreams: Vec<SocketAddr>, timeout: Duration) {
        self.upstreams.store(Arc::new(Upstreams::new(upstreams, timeout, &self.families)));
    }

    /// Asks the upstreams in order; `None` when none answered usefully in
    /// time (the caller answers SERVFAIL).
    pub async fn resolve(&self, query: &Query) -> Option<Message> {
        let upstreams = self.upstreams.load_full();
        let deadline = tokio::time::Instant::now() + upstreams.timeout;
        let mut last_rcode = None;
        for (i, upstream) in upstreams.list.iter().enumerate() {
            let now = tokio::time::Instant::now();
            if now >= deadline {
                break;
            }
            // Share what is left among the upstreams not yet tried, so one
            // silent resolver cannot eat the whole budget.
            let left = u32::try_from(upstreams.list.len() - i).unwrap_or(u32::MAX);
            let attempt_deadline = now + (deadline - now) / left;
            let (metrics, sent) = (&upstreams.metrics[i], Instant::now());
            metrics.request();
            let answered = exchange(*upstream, query, attempt_deadline).await;
            if let Ok(msg) = &answered {
                metrics.response(msg.metadata.response_code.low(), sent);
            }
            match answered {
                Ok(msg) => match msg.metadata.response_code {
                    code @ (ResponseCode::ServFail | ResponseCode::Refused | ResponseCode::NotImp) => {
                        self.failed(*upstream, query, &UpstreamError::Rcode(code));
                        last_rcode = Some(msg);
                    }
                    _ => return Some(msg),
                },
                Err(error) => self.failed(*upstream, query, &error),
            }
        }
        // An upstream's own REFUSED/NOTIMP is more telling than SERVFAIL.
        last_rcode.filter(|m| m.metadata.response_code != ResponseCode::ServFail)
    }

    fn failed(&self, upstream: SocketAddr, query: &Query, error: &UpstreamError) {
        if self.warn.due() {
            tracing::warn!(%upstream, name = %query.name(), %error, "upstream DNS server failed (further failures logged at debug for 30 s)");
        } else {
            tracing::debug!(%upstream, name = %query.name(), %error, "upstream DNS server failed");
        }
    }
}

/// One question to one upstream: UDP, then TCP if truncated.
pub async fn exchange(
    upstream: SocketAddr,
    query: &Query,
    deadline: tokio::time::Instant,
) -> Result<Message, UpstreamError> {
    let id: u16 = rand::random();
    let mut request = Message::new(id, MessageType::Query, OpCode::Query);
    request.metadata.recursion_desired = true;
    request.add_query(query.clone());
    let mut edns = Edns::new();
    edns.set_max_payload(UPSTREAM_PAYLOAD);
    request.set_edns(edns);
    let bytes = request.to_vec().map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;

    let budget = deadline.saturating_duration_since(tokio::time::Instant::now());
    let udp = match timeout_at(deadline, exchange_udp(upstream, &bytes, id, query)).await {
        Ok(result) => result?,
        Err(_) => return Err(UpstreamError::Timeout(budget)),
    };
    if !udp.metadata.truncation {
        return Ok(udp);
    }
    match timeout_at(deadline, exchange_tcp(upstream, &bytes, id, query)).await {
        Ok(result) => result,
        Err(_) => Err(UpstreamError::Timeout(budget)),
    }
}

async fn exchange_udp(upstream: SocketAddr, bytes: &[u8], id: u16, query: &Query) -> Result<Message, UpstreamError> {
    let local: SocketAddr = match upstream {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(upstream).await?;
    socket.send(bytes).await?;
    let mut buf = vec![0u8; 4096];
    loop {
        // A refused port shows up here as ECONNREFUSED, right away.
        let n = socket.recv(&mut buf).await?;
        // Anything else (late replies, spoofing attempts, garbage) is ignored.
        if let Some(msg) = matching_reply(&buf[..n], id, query) {
            return Ok(msg);
        }
    }
}

async fn exchange_tcp(upstream: SocketAddr, bytes: &[u8], id: u16, query: &Query) -> Result<Message, UpstreamError> {
    let mut stream = TcpStream::connect(upstream).await?;
    stream.set_nodelay(true)?;
    let len = u16::try_from(bytes.len()).map_err(|_| UpstreamError::BadReply)?;
    let mut framed = Vec::with_capacity(bytes.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(bytes);
    stream.write_all(&framed).await?;
    let len = stream.read_u16().await?;
    let mut buf = vec![0u8; usize::from(len)];
    stream.read_exact(&mut buf).await?;
    matching_reply(&buf, id, query).ok_or(UpstreamError::BadReply)
}

/// An upstream's reply as the agent can pass it on to clients: a response
/// to a standard query. Anything else is refused like garbage: an UPDATE
/// message, for one, may hold records with an empty RDATA, which hickory
/// reads there but which no reader accepts in the answer to a query (found by
/// the `dns_forwarded_answer` fuzz target: the agent sent clients a
/// malformed answer).
pub fn read_reply(bytes: &[u8]) -> Option<Message> {
    let msg = Message::from_vec(bytes).ok()?;
    (msg.metadata.message_type == MessageType::Response && msg.metadata.op_code == OpCode::Query).then_some(msg)
}

/// `bytes` read by [`read_reply`], if it is the reply to our query `id` for `query`.
fn matching_reply(bytes: &[u8], id: u16, query: &Query) -> Option<Message> {
    let msg = read_reply(bytes)?;
    let same_question = match msg.queries.as_slice() {
        [q] => {
            q.name() == query.name() && q.query_type() == query.query_type() && q.query_class() == query.query_class()
        }
        _ => false,
    };
    (msg.metadata.id == id && same_question).then_some(msg)
}

#[cfg(test)]
mod tests {
    use hickory_proto::op::Query;
    use hickory_proto::rr::{Name, RecordType};

    use super::*;

    /// An UPDATE message whose records hickory-proto reads (empty RDATA is
    /// allowed there) but which no reader accepts in the answer to a query
    /// (the fuzz target's crash input): refused, never cached or passed on.
    #[test]
    fn a_reply_that_is_not_to_a_query_is_refused() {
        let crash = b"\x12\x34\x2d\x80\x00\x01\x00\x02\x00\x00\x00\x00\x07\x64\x43\x61\x6d\x70\x6f\x6c\x00\x29\x00\x00\
          \x00\x00\x00\x00\x00\xc0\x0c\x00\x3e\x00\x00\x00\x00\x00\x00\x00\x41\x84\x00\x81\xf9\x00\x00\x01\
          \x80\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\
          \x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\
          \x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\
          \x00\x00\x03\x07\x00\x00\x00\x00\x00\x00\x00\xff\xff\x00\x3c\x00\x04\xc0\x00\x03\x00\x00\x00\x43\
          \x61\x6d\x00\x02\x7a\x63\x2d\x0a\x63\x02";
        let parsed = Message::from_vec(crash).expect("hickory-proto reads it");
        assert_eq!(parsed.metadata.op_code, OpCode::Update);
        assert!(read_reply(crash).is_none());
        let query = parsed.queries[0].clone();
        assert!(matching_reply(crash, parsed.metadata.id, &query).is_none());
    }

    #[test]
    fn a_plain_reply_is_read_as_sent() {
        let query = Query::query(Name::from_ascii("example.com.").unwrap(), RecordType::A);
        let mut reply = Message::new(7, MessageType::Response, OpCode::Query);
        reply.add_query(query.clone());
        let bytes = reply.to_vec().unwrap();
        assert_eq!(matching_reply(&bytes, 7, &query).map(|m| m.queries), Some(vec![query.clone()]));
        assert!(matching_reply(&bytes, 8, &query).is_none(), "another ID");
    }
}
