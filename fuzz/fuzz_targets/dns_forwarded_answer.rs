//! An upstream's answer, through the forwarding cache and back to a client:
//! the bytes are read as the forwarder reads a reply (`read_reply`); a reply to one
//! question is stored under that question (if cacheable) and then asked for
//! by a client, whose answer (from the cache or not) must parse, carry the
//! client's ID and fit its UDP size, TTLs aged, sections as stored.
#![no_main]

use std::time::Instant;

use edgemesh_dns::cache::CacheKey;
use edgemesh_dns::forward::read_reply;
use edgemesh_dns::handler::{MAX_UDP_PAYLOAD, Step, Transport};
use edgemesh_fuzz::{CLIENT, check_response, dns_handler};
use hickory_proto::op::{Edns, Message, MessageType, OpCode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let Some(reply) = read_reply(bytes) else { return };
    let [query] = reply.queries.as_slice() else { return };
    let query = query.clone();
    let handler = dns_handler();
    let key = CacheKey { name: query.name().clone(), qtype: query.query_type(), qclass: query.query_class() };
    let stored = handler.cache().insert(key.clone(), reply, Instant::now());
    let cached = handler.cache().get(&key, Instant::now());
    if let Some(hit) = &cached {
        assert_eq!(hit.answers.len(), stored.answers.len(), "the cache changed the answer section");
    }

    let mut request = Message::new(0x4242, MessageType::Query, OpCode::Query);
    request.metadata.recursion_desired = true;
    request.add_query(query);
    for edns in [false, true] {
        if edns {
            let mut e = Edns::new();
            e.set_max_payload(MAX_UDP_PAYLOAD);
            request.set_edns(e);
        }
        let Ok(packet) = request.to_vec() else { return };
        let max = if edns { usize::from(MAX_UDP_PAYLOAD) } else { 512 };
        let mut out = Vec::new();
        match handler.handle(&packet, Transport::Udp, CLIENT, &mut out) {
            Step::Reply => check_response(Some(0x4242), &out, max),
            Step::Drop => panic!("a query the client could send was dropped"),
            // Not in the cache: only an uncacheable reply (or a name of the cluster zone) may miss.
            Step::Forward(pending) => {
                assert!(cached.is_none(), "a cached answer went to the upstreams again");
                check_response(Some(0x4242), &handler.servfail(pending), max);
            }
        }
    }
});
