//! A DNS request from a client, through the real handler (fast path, general
//! path, cluster zone, the cache and the hand-off to the upstreams), over UDP
//! and TCP: every reply parses, answers the request's ID and fits the size
//! the transport allows; a request handed to the upstreams can still be
//! answered (SERVFAIL) and that answer encodes.
#![no_main]

use edgemesh_dns::handler::{MAX_UDP_PAYLOAD, Step, Transport};
use edgemesh_fuzz::{CLIENT, check_response, dns_handler};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|packet: &[u8]| {
    let handler = dns_handler();
    let id = (packet.len() >= 2).then(|| u16::from_be_bytes([packet[0], packet[1]]));
    for (transport, max) in [(Transport::Udp, usize::from(MAX_UDP_PAYLOAD)), (Transport::Tcp, usize::from(u16::MAX))] {
        let mut out = Vec::new();
        match handler.handle(packet, transport, CLIENT, &mut out) {
            Step::Reply => check_response(id, &out, max),
            Step::Drop => {}
            Step::Forward(pending) => check_response(id, &handler.servfail(pending), max),
        }
    }
});
