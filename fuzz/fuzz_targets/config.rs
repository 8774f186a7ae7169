//! The agent's config file: a text that parses is a config that validates
//! without panicking, and prints (as `--print-config` and `/config` do) to
//! YAML that parses back to the same config.
#![no_main]

use edgemesh::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let Ok(text) = std::str::from_utf8(bytes) else { return };
    let Ok(mut config) = Config::parse_yaml(text) else { return };
    let _ = config.validate();
    let printed = serde_saphyr::to_string(&config).expect("a parsed config prints");
    let back =
        Config::from_yaml(&printed).unwrap_or_else(|e| panic!("printed config does not parse ({e}):\n{printed}"));
    assert_eq!(back, config, "printed config reads back different:\n{printed}");
    config.fill_defaults();
    let _ = config.validate();
});
