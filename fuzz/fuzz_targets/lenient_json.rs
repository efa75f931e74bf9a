//! The lenient parser of cut JSON bodies on arbitrary text: a value or nothing, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = trace_proxy::sanitize::lenient_prefix(&text);
});
