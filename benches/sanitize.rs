//! Sanitize + truncate on a 64 KiB n8n-shaped JSON body (D4). Side by side in one run, so
//! the ratios hold on a shared machine: plain `serde_json` parse + serialize (the floor any
//! storage form pays), the whole stored form at a 64 KiB cap (parse, redact, fit), the same
//! cut to 16 KiB (structure-keeping truncation), and the same body cut at the capture cap
//! (lenient prefix parse). `cargo bench --bench sanitize`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::too_many_lines,
    clippy::cognitive_complexity,
    unreachable_pub,
    clippy::disallowed_methods,
    reason = "test and measurement code: a failed step should stop it loudly"
)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use serde_json::{json, Value};
use trace_proxy::sanitize::{BodySample, Sanitizer};

/// n8n's item list shape (`[{json: {...}, pairedItem}]`) with the usual mix: ids, timestamps,
/// emails, URLs, free text, a few credentials and a JSON string, until `size` bytes.
fn n8n_body(size: usize) -> Vec<u8> {
    let mut items = Vec::new();
    let mut i = 0;
    loop {
        items.push(json!({
            "json": {
                "id": format!("{i}"),
                "executionId": "48213",
                "workflowId": "order-flow",
                "createdAt": "2026-11-26T11:47:40.123Z",
                "customer": {"name": format!("Customer {i}"), "email": format!("c{i}@example.com"), "id": "550e8400-e29b-41d4-a716-446655440000"},
                "headers": {"content-type": "application/json", "authorization": "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJlc2ln", "x-request-id": format!("req-{i}")},
                "message": "Order received and queued for fulfilment; see https://shop.example.com/orders?id=17&view=full for details.",
                "body": json!({"orderId": i, "total": 129.5, "apiKey": "k-1234567890"}).to_string(),
                "lines": [{"sku": "A-1", "qty": 2, "price": 19.99}, {"sku": "B-7", "qty": 1, "price": 89.5}],
                "status": "queued",
            },
            "pairedItem": {"item": i},
        }));
        i += 1;
        let v = Value::Array(items.clone());
        if v.to_string().len() >= size {
            items.pop();
            return Value::Array(items).to_string().into_bytes();
        }
    }
}

fn sample(bytes: &[u8], cut: bool) -> BodySample<'_> {
    BodySample {
        bytes,
        total_bytes: Some(bytes.len() as u64),
        cut,
        content_type: Some("application/json"),
        content_encoding: None,
    }
}

fn bench(c: &mut Criterion) {
    let sanitizer = Sanitizer::default_rules().expect("built-in rules compile");
    let body = n8n_body(64 * 1024);
    let mut g = c.benchmark_group("sanitize_64KiB_n8n_json");
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.measurement_time(Duration::from_secs(4));
    g.warm_up_time(Duration::from_secs(1));
    g.sample_size(30);
    g.bench_function("baseline_parse_serialize", |b| {
        b.iter(|| {
            let v: Value = serde_json::from_slice(black_box(&body)).expect("JSON");
            black_box(serde_json::to_vec(&v).expect("serializes"))
        })
    });
    g.bench_function("sanitize_cap_64KiB", |b| {
        b.iter(|| black_box(sanitizer.payload(sample(black_box(&body), false), 65_536)))
    });
    g.bench_function("sanitize_truncate_to_16KiB", |b| {
        b.iter(|| black_box(sanitizer.payload(sample(black_box(&body), false), 16_384)))
    });
    g.bench_function("cut_prefix_sanitize", |b| {
        b.iter(|| black_box(sanitizer.payload(sample(black_box(&body[..48 * 1024]), true), 65_536)))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
