//! The configuration parser on arbitrary text: a configuration or a list of problems, never a
//! panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = trace_proxy::Config::from_toml_str(&text);
});
