//! A client's bytes on a connection to an HTTP service port, through the
//! agent's HTTP front from memory (upstream: a fixed response), under
//! tokio's paused clock. The first byte says how the client ends: odd, it
//! half-closes after sending; even, it stays connected and silent. The
//! front never panics, closes the connection within its limits (head,
//! request and idle timeouts) even when the client does not, gives its
//! connection slot back, and writes back only an HTTP/1.1 response head
//! that parses, or HTTP/2 frames after the HTTP/2 preface.
//!
//! `EDGEMESH_FUZZ_DUMP=1 cargo +nightly fuzz run -s none http_request_head FILE`
//! prints what the front wrote back, and when it closed.
#![no_main]

use std::sync::LazyLock;

use edgemesh_fuzz::http_front::{check_written, close_within, config, serve};
use libfuzzer_sys::fuzz_target;

static DUMP: LazyLock<bool> = LazyLock::new(|| std::env::var_os("EDGEMESH_FUZZ_DUMP").is_some());

fuzz_target!(|input: &[u8]| {
    let Some((&mode, request)) = input.split_first() else { return };
    let outcome = serve(request, mode & 1 == 1);
    if *DUMP {
        eprintln!("closed after {:?}: {:?}", outcome.closed_after, String::from_utf8_lossy(&outcome.written));
    }
    let closed_after = outcome
        .closed_after
        .unwrap_or_else(|| panic!("the front kept a silent connection open past {:?}", close_within(&config())));
    assert!(closed_after <= close_within(&config()), "closed after {closed_after:?}");
    assert_eq!(outcome.connections_left, 0, "the connection's slot was not given back");
    check_written(request, &outcome.written);
});
