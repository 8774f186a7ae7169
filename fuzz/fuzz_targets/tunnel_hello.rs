//! A peer's hello on the tunnel (what any node that completes the libp2p
//! handshake can send): an error or a hello, and a hello accepted re-encodes
//! to one that reads back with the same node and flags (the agent string,
//! for logs only, may be shortened to its limit).
#![no_main]

use edgemesh_fuzz::ready;
use edgemesh_tunnel::fuzzing::{encode_hello, read_hello};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let Ok(hello) = ready(read_hello(&mut &bytes[..])) else { return };
    assert!(!hello.node.is_empty() && hello.node.len() <= 253, "node name of {} bytes accepted", hello.node.len());
    let back = ready(read_hello(&mut &encode_hello(&hello)[..])).expect("a hello re-encodes");
    assert_eq!((&back.node, back.keep_open), (&hello.node, hello.keep_open));
    assert!(hello.agent.starts_with(&back.agent));
});
