//! The header of a proxy stream on the tunnel (what a peer asks this node to
//! dial): an error or a header, and a header accepted re-encodes to one
//! that reads back with the same protocol, target and host flag (the
//! service name, for logs only, may be shortened to its limit).
#![no_main]

use edgemesh_fuzz::ready;
use edgemesh_tunnel::fuzzing::{encode_header, read_header};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let Ok(header) = ready(read_header(&mut &bytes[..])) else { return };
    if header.to_host {
        assert!(header.target.ip().is_loopback(), "a host port must mean this node's loopback");
    }
    let back = ready(read_header(&mut &encode_header(&header)[..])).expect("a header re-encodes");
    assert_eq!((back.protocol, back.target, back.to_host), (header.protocol, header.target, header.to_host));
    assert!(header.service.starts_with(&back.service));
});
