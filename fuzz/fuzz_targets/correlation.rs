//! Correlation on an arbitrary path and headers (trace id, traceparent, workflow, user): always
//! an answer, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.split('\n');
    let path = format!("/{}", parts.next().unwrap_or(""));
    let mut headers = http::HeaderMap::new();
    for (name, value) in [
        "x-trace-id",
        "traceparent",
        "x-workflow-id",
        "x-user-id",
        "x-execution-id",
    ]
    .into_iter()
    .zip(parts)
    {
        if let Ok(v) = http::HeaderValue::from_str(value) {
            headers.insert(name, v);
        }
    }
    let _ = trace_proxy::fuzzing::correlate(&path, &headers);
});
