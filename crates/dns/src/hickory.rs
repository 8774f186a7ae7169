//! Our [`Handler`] as a hickory-server [`RequestHandler`], so any
//! hickory-server transport can serve the node-local zone; [`server`]
//! serves TCP this way.
//!
//! The request's raw bytes go through exactly the same code as a UDP
//! packet ([`Handler::answer`]: fast path, cluster zone, cache, upstreams,
//! size limit), so every transport gives the same answers. The response is
//! then handed to hickory-server's [`ResponseHandler`] as a
//! [`MessageResponse`](hickory_server::zone_handler::MessageResponse), which re-encodes it with the client's question bytes
//! as sent.
//!
//! Size limits: stream transports (TCP, and TLS/HTTPS/QUIC if ever
//! registered) get up to 64 KiB, like our own TCP. Over hickory-server's
//! UDP, which we do not use, hickory truncates to the EDNS size we
//! advertise ([`OUR_PAYLOAD`](crate::wire::OUR_PAYLOAD)) or 512, which can
//! be less than the client asked for; our own UDP loop honours the client's
//! size up to [`MAX_UDP_PAYLOAD`](crate::handler::MAX_UDP_PAYLOAD).
//!
//! Unlike our UDP loop, hickory-server itself answers FORMERR to requests
//! whose header parses but whose body does not, and drops responses and
//! packets shorter than a header before they reach us.
//!
//! [`server`]: crate::server

use std::sync::Arc;

use hickory_proto::op::{Header, HeaderCounts, Message, Metadata, ResponseCode};
use hickory_server::net::runtime::Time;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;

use crate::handler::{Handler, Transport};

/// [`Handler`] for hickory-server's [`Server`](hickory_server::Server).
#[derive(Clone, Debug)]
pub struct HickoryHandler {
    handler: Arc<Handler>,
}

impl HickoryHandler {
    /// Serves requests with `handler`, which the UDP loops may share.
    pub fn new(handler: Arc<Handler>) -> Self {
        Self { handler }
    }
}

#[async_trait::async_trait]
impl RequestHandler for HickoryHandler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let transport = if request.protocol().is_datagram() { Transport::Udp } else { Transport::Tcp };
        let Some(bytes) = self.handler.answer(request.as_slice(), transport, request.src().ip()).await else {
            // Nothing to say (e.g. a request hickory-proto's Message cannot
            // read); the server ignores the returned info.
            return info(&request.metadata, ResponseCode::ServFail);
        };
        let queries = &request.queries;
        let sent = match Message::from_vec(&bytes) {
            Ok(response) => {
                let reply = MessageResponseBuilder::new(queries, response.edns.as_ref()).build(
                    response.metadata,
                    &response.answers,
                    &response.authorities,
                    std::iter::empty(),
                    &response.additionals,
                );
                response_handle.send_response(reply).await
            }
            Err(error) => {
                // Cannot happen for bytes we encoded; answer rather than hang.
                tracing::debug!(%error, "cannot read back our own response; answering SERVFAIL");
                let reply =
                    MessageResponseBuilder::new(queries, None).error_msg(&request.metadata, ResponseCode::ServFail);
                response_handle.send_response(reply).await
            }
        };
        sent.unwrap_or_else(|error| {
            tracing::debug!(src = %request.src(), protocol = %request.protocol(), %error, "cannot send DNS response");
            info(&request.metadata, ResponseCode::ServFail)
        })
    }
}

/// A response summary for a response that was not sent.
fn info(request: &Metadata, rcode: ResponseCode) -> ResponseInfo {
    let mut metadata = Metadata::response_from_request(request);
    metadata.response_code = rcode;
    ResponseInfo::from(Header { metadata, counts: HeaderCounts::default() })
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::Mutex;

    use edgemesh_core::registry::RegistryState;
    use edgemesh_core::{LbStrategy, RegistryConfig, SourceEvent, build};
    use hickory_proto::op::{Edns, MessageType, OpCode, Query};
    use hickory_proto::rr::{Name, Record, RecordType};
    use hickory_proto::serialize::binary::BinEncoder;
    use hickory_server::net::NetError;
    use hickory_server::net::runtime::TokioTime;
    use hickory_server::net::xfer::Protocol;
    use hickory_server::zone_handler::MessageResponse;
    use tokio::sync::watch;

    use super::*;
    use crate::cache::Cache;
    use crate::cluster::Zone;

    /// Keeps what would have gone on the wire.
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<Vec<u8>>>>);

    #[async_trait::async_trait]
    impl ResponseHandler for Capture {
        async fn send_response<'a>(
            &mut self,
            response: MessageResponse<
                '_,
                'a,
                impl Iterator<Item = &'a Record> + Send + 'a,
                impl Iterator<Item = &'a Record> + Send + 'a,
                impl Iterator<Item = &'a Record> + Send + 'a,
                impl Iterator<Item = &'a Record> + Send + 'a,
            >,
        ) -> Result<ResponseInfo, NetError> {
            let mut bytes = Vec::new();
            let info = response.destructive_emit(&mut BinEncoder::new(&mut bytes))?;
            self.0.lock().unwrap().push(bytes);
            Ok(info)
        }
    }

    fn handler() -> (Arc<Handler>, watch::Sender<Arc<edgemesh_core::Snapshot>>) {
        let config = RegistryConfig {
            vip_cidr: "9.251.0.0/16".parse().unwrap(),
            default_strategy: LbStrategy::RoundRobin,
            ..Default::default()
        };
        let mut state = RegistryState::new(&config);
        let mut slice = build::slice("default", "big-1", "big");
        for i in 0..100 {
            slice = slice.endpoint(&format!("10.3.0.{}", i + 1), "n1");
        }
        for object in [
            build::service("default", "web").port("http", 80, 8080).object(),
            build::service("default", "big").headless().object(),
            slice.object(),
        ] {
            state.apply(SourceEvent::Apply(object));
        }
        let (tx, rx) = watch::channel(Arc::new(state.take_generation()));
        (Arc::new(Handler::new(Zone::new("cluster.local", 5).unwrap(), rx, None, Cache::new(10))), tx)
    }

    fn query(id: u16, name: &str, qtype: RecordType, edns: bool) -> Vec<u8> {
        let mut m = Message::new(id, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
        if edns {
            m.set_edns(Edns::new());
        }
        m.to_vec().unwrap()
    }

    /// Our answer through hickory-server's request and response types.
    async fn exchange(handler: &Arc<Handler>, packet: Vec<u8>, protocol: Protocol) -> (ResponseInfo, Vec<Vec<u8>>) {
        let src: SocketAddr = "127.0.0.1:5353".parse().unwrap();
        let request = Request::from_bytes(packet, src, protocol).unwrap();
        let capture = Capture::default();
        let info = HickoryHandler::new(handler.clone()).handle_request::<_, TokioTime>(&request, capture.clone()).await;
        let sent = capture.0.lock().unwrap().clone();
        (info, sent)
    }

    #[tokio::test]
    async fn answers_are_the_handlers_through_hickory_types() {
        let (handler, _tx) = handler();
        for (name, qtype, edns) in [
            ("WEB.default.svc.cluster.local.", RecordType::A, true),
            ("web.default.svc.cluster.local.", RecordType::AAAA, false),
            ("nope.default.svc.cluster.local.", RecordType::A, false),
            ("_http._tcp.web.default.svc.cluster.local.", RecordType::SRV, true),
            ("www.example.com.", RecordType::A, false),
        ] {
            let packet = query(7, name, qtype, edns);
            let direct =
                Message::from_vec(&handler.answer(&packet, Transport::Tcp, [127, 0, 0, 1].into()).await.unwrap())
                    .unwrap();
            let (info, sent) = exchange(&handler, packet, Protocol::Tcp).await;
            assert_eq!(sent.len(), 1, "{name}");
            let via = Message::from_vec(&sent[0]).unwrap();
            assert_eq!(via.metadata, direct.metadata, "{name} {qtype}");
            assert_eq!(via.queries, direct.queries);
            assert!(via.queries[0].name().eq_case(direct.queries[0].name()), "question as sent");
            assert_eq!(via.answers, direct.answers);
            assert_eq!(via.authorities, direct.authorities);
            assert_eq!(via.additionals, direct.additionals);
            assert_eq!(via.edns.map(|e| e.max_payload()), direct.edns.map(|e| e.max_payload()));
            assert_eq!(info.response_code, direct.metadata.response_code);
            assert_eq!(usize::from(info.counts().answers), direct.answers.len());
        }
    }

    #[tokio::test]
    async fn streams_get_everything_datagrams_get_tc() {
        let (handler, _tx) = handler();
        let packet = query(9, "big.default.svc.cluster.local.", RecordType::A, false);
        let (_, sent) = exchange(&handler, packet.clone(), Protocol::Tcp).await;
        let whole = Message::from_vec(&sent[0]).unwrap();
        assert_eq!(whole.answers.len(), 100);
        assert!(!whole.metadata.truncation);
        let (_, sent) = exchange(&handler, packet, Protocol::Udp).await;
        let truncated = Message::from_vec(&sent[0]).unwrap();
        assert!(truncated.metadata.truncation);
        assert!(sent[0].len() <= 512);
    }

    #[tokio::test]
    async fn requests_we_do_not_answer_send_nothing() {
        let (handler, _tx) = handler();
        // Two questions: FORMERR from our handler, echoing both.
        let mut m = Message::new(3, MessageType::Query, OpCode::Query);
        for name in ["a.example.", "b.example."] {
            m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
        }
        let (_, sent) = exchange(&handler, m.to_vec().unwrap(), Protocol::Tcp).await;
        let formerr = Message::from_vec(&sent[0]).unwrap();
        assert_eq!(formerr.metadata.response_code, ResponseCode::FormErr);
        assert_eq!(formerr.queries.len(), 2);
        // A response is dropped by our handler (hickory-server's Server
        // drops it even earlier).
        let mut response = Message::new(4, MessageType::Response, OpCode::Query);
        response.add_query(Query::query(Name::from_ascii("a.example.").unwrap(), RecordType::A));
        let (info, sent) = exchange(&handler, response.to_vec().unwrap(), Protocol::Tcp).await;
        assert!(sent.is_empty());
        assert_eq!(info.id, 4);
    }
}
