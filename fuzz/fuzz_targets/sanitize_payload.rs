//! The sanitizer on arbitrary bytes under every kind of content type and encoding: it must
//! store something (or nothing for an empty body) without panicking, within the cap.
#![no_main]

use libfuzzer_sys::fuzz_target;
use trace_proxy::sanitize::{BodySample, Sanitizer};

const TYPES: [Option<&str>; 8] = [
    None,
    Some("application/json"),
    Some("text/html; charset=utf-8"),
    Some("application/x-www-form-urlencoded"),
    Some("multipart/form-data; boundary=b"),
    Some("text/plain"),
    Some("application/octet-stream"),
    Some("application/x-ndjson"),
];
const ENCODINGS: [Option<&str>; 4] = [None, Some("gzip"), Some("deflate"), Some("br")];

fuzz_target!(|data: &[u8]| {
    static SAN: std::sync::LazyLock<Sanitizer> =
        std::sync::LazyLock::new(|| Sanitizer::default_rules().expect("defaults compile"));
    let Some((&selector, bytes)) = data.split_first() else {
        return;
    };
    let sample = BodySample {
        bytes,
        total_bytes: None,
        cut: selector & 0x80 != 0,
        content_type: TYPES[usize::from(selector & 7)],
        content_encoding: ENCODINGS[usize::from((selector >> 3) & 3)],
    };
    let stored = SAN.payload(sample, 4096);
    if let Some(v) = stored.value {
        // Within the cap plus the indicator's room.
        assert!(
            v.to_string().len() <= 4096 + 4096,
            "stored {} bytes",
            v.to_string().len()
        );
    }
});
