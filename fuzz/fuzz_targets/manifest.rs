//! A manifest file's text, through the parser the manifests source runs (the
//! fast path for plain block YAML, serde-saphyr for the rest): it gives the
//! same objects and the same error, with the same line, as serde-saphyr
//! alone, and every object it accepts survives the offline cache.
#![no_main]

use edgemesh_fuzz::assert_cacheable;
use edgemesh_manifests::parse::{parse_manifest, parse_manifest_reference};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    // The source reads files as UTF-8 text.
    let Ok(text) = std::str::from_utf8(bytes) else { return };
    let parsed = parse_manifest(text);
    assert_eq!(parsed, parse_manifest_reference(text), "the fast path and serde-saphyr disagree on:\n{text}");
    for object in parsed.iter().flatten() {
        assert_cacheable(&object.object);
    }
});
