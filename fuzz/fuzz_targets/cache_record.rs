//! A record of the offline cache (`stateDir/cache.redb`, which a crash, a
//! full disk or an older agent may have left in any state): decoding gives
//! an object or an error, and an object decoded re-encodes to a record that
//! decodes to the same object.
#![no_main]

use edgemesh_fuzz::assert_cacheable;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(object) = edgemesh_cache::codec::decode(bytes) {
        assert_cacheable(&object);
    }
});
