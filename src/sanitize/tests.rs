//! Unit tests of the stored form: one per rule and channel, with true positives and negative
//! controls, plus configuration.

use std::io::Write;

use serde_json::{json, Value};

use super::*;

const JWT: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c";
const UUID: &str = "550e8400-e29b-41d4-a716-446655440000";
const NON_LUHN: &str = "4111111111111112";

fn s() -> Sanitizer {
    Sanitizer::default_rules().expect("defaults compile")
}

fn sample<'a>(bytes: &'a [u8], ctype: Option<&'a str>) -> BodySample<'a> {
    BodySample {
        bytes,
        total_bytes: Some(bytes.len() as u64),
        cut: false,
        content_type: ctype,
        content_encoding: None,
    }
}

fn stored_with(san: &Sanitizer, bytes: &[u8], ctype: Option<&str>, cap: usize) -> Stored {
    san.payload(sample(bytes, ctype), cap)
}

fn stored(bytes: &[u8], ctype: Option<&str>) -> Value {
    stored_with(&s(), bytes, ctype, 4096)
        .value
        .expect("non-empty")
}

fn json_body(v: &Value) -> Stored {
    stored_with(
        &s(),
        v.to_string().as_bytes(),
        Some("application/json"),
        65_536,
    )
}

fn rules_fired(r: &Redactions) -> Vec<String> {
    r.iter().map(|e| format!("{} {}", e.rule, e.path)).collect()
}

fn size(v: &Value) -> usize {
    serde_json::to_vec(v).expect("serializes").len()
}

// ---- storage form (unchanged behaviour) -------------------------------------------------

#[test]
fn json_is_stored_as_json_with_secrets_redacted_at_any_depth() {
    let v = stored(
        br#"{"user":"a","Password":"hunter2","items":[{"refresh_token":"r1","n":1}],"auth":{"apiKey":"k"}}"#,
        Some("application/json; charset=utf-8"),
    );
    assert_eq!(v["user"], "a");
    assert_eq!(v["Password"], REDACTED);
    assert_eq!(v["items"][0]["refresh_token"], REDACTED);
    assert_eq!(v["items"][0]["n"], 1);
    assert_eq!(v["auth"], REDACTED);
    assert!(!v.to_string().contains("hunter2"));
}

#[test]
fn nul_in_json_string_is_replaced() {
    let v = stored(br#"{"a":"x\u0000y","k\u0000":1}"#, Some("application/json"));
    assert_eq!(v, json!({"a": "x\u{FFFD}y", "k\u{FFFD}": 1}));
}

#[test]
fn lone_surrogate_json_falls_back_to_text() {
    let v = stored(br#"{"a":"\ud800"}"#, Some("application/json"));
    assert_eq!(v, Value::String(r#"{"a":"\ud800"}"#.into()));
}

#[test]
fn absurd_nesting_is_stored_as_text() {
    let deep = "[".repeat(10_000);
    let v = payload_for_storage(sample(deep.as_bytes(), Some("application/json")), 65_536)
        .expect("stored");
    assert!(v.is_string());
}

#[test]
fn invalid_utf8_text_is_stored_lossily() {
    let v = stored(b"ab\xff\xfecd", Some("text/plain"));
    assert_eq!(v, Value::String("ab\u{FFFD}\u{FFFD}cd".into()));
}

#[test]
fn binary_becomes_a_descriptor() {
    let v = stored(&[0u8, 1, 2, 255], Some("application/octet-stream"));
    assert_eq!(v["_descriptor"]["bytes"], 4);
    assert_eq!(v["_descriptor"]["binary"], true);
}

#[test]
fn empty_body_is_none() {
    assert_eq!(s().payload(sample(b"", None), 100), Stored::default());
}

// ---- key rules ----------------------------------------------------------------------------

#[test]
fn key_rules_any_depth_case_and_separator_insensitive_key_kept() {
    let body = json!({
        "PASS_WORD": "c1", "userPassword": "c2", "refreshToken": "c3", "refresh_token": "c4",
        "apiKey": "c5", "x-n8n-api-key": "c6", "client_secret": "c7", "authorization": "c8",
        "cookie": "c9", "secret": "c10", "token": "c11", "private_key": "c12",
        "credentials": {"user": "u", "pw": "c13"}, "otp": 123456, "cvv": "c15",
        "list": [{"nested": [{"Password": "c16"}]}],
        "workflowId": "wf-1", "executionId": "48213", "description": "plain",
    });
    let out = json_body(&body);
    let v = out.value.expect("stored");
    let text = v.to_string();
    for i in 1..=16 {
        assert!(
            !text.contains(&format!("\"c{i}\"")),
            "c{i} survived: {text}"
        );
    }
    assert!(!text.contains("123456"));
    assert_eq!(v["PASS_WORD"], REDACTED, "key stays, value replaced");
    assert_eq!(v["list"][0]["nested"][0]["Password"], REDACTED);
    assert_eq!(
        v["credentials"], REDACTED,
        "a whole subtree under a secret key"
    );
    // Negative controls.
    assert_eq!(v["workflowId"], "wf-1");
    assert_eq!(v["executionId"], "48213");
    assert_eq!(v["description"], "plain");
    let fired = rules_fired(&out.redactions);
    assert!(
        fired.contains(&"key:*password* $.PASS_WORD".to_owned()),
        "{fired:?}"
    );
    assert!(
        fired.contains(&"key:*password* $.list[*].nested[*].Password".to_owned()),
        "{fired:?}"
    );
    assert!(
        fired.contains(&"key:*apikey* $[\"x-n8n-api-key\"]".to_owned()),
        "{fired:?}"
    );
    assert!(
        !out.redactions.to_json().to_string().contains("c1"),
        "no values recorded"
    );
}

#[test]
fn null_and_booleans_under_secret_keys_stay_and_token_counts_are_kept() {
    let v = json_body(&json!({
        "password": null, "hasPassword": true, "usage": {"total_tokens": 1234, "prompt_tokens": "sk"},
        "token": 42,
    }))
    .value
    .expect("stored");
    assert_eq!(v["password"], Value::Null);
    assert_eq!(v["hasPassword"], true);
    assert_eq!(v["usage"]["total_tokens"], 1234);
    assert_eq!(
        v["usage"]["prompt_tokens"], REDACTED,
        "strings under them are not kept"
    );
    assert_eq!(v["token"], REDACTED);
}

#[test]
fn literal_replacement_is_not_counted_as_a_redaction() {
    let out = json_body(&json!({"password": REDACTED}));
    assert!(out.redactions.is_empty());
}

// ---- value patterns inside strings -------------------------------------------------------

#[test]
fn value_patterns_in_json_strings_with_negative_controls() {
    let body = json!({
        "note": format!("use {JWT} now"),
        "header": "Bearer abcdefghijklmnop",
        "pem": "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----",
        "card": "4111 1111 1111 1111",
        "cardNum": 5555555555554444u64,
        "aws": "AKIAIOSFODNN7EXAMPLE",
        "dsn": "postgres://app:pg-canary@db:5432/x",
        "uuid": UUID,
        "n8nExecution": "48213",
        "notACard": NON_LUHN,
        "ts": 1_700_000_000_000u64,
        "amount": "12.50",
    });
    let out = json_body(&body);
    let v = out.value.expect("stored");
    assert_eq!(v["note"], "use [REDACTED] now");
    assert_eq!(v["header"], "Bearer [REDACTED]");
    assert_eq!(v["pem"], REDACTED);
    assert_eq!(v["card"], REDACTED);
    assert_eq!(v["cardNum"], REDACTED);
    assert_eq!(v["aws"], REDACTED);
    assert_eq!(v["dsn"], "postgres://[REDACTED]@db:5432/x");
    for k in ["uuid", "n8nExecution", "notACard", "ts", "amount"] {
        assert_eq!(v[k], body[k], "negative control {k} changed");
    }
    let fired = rules_fired(&out.redactions);
    for f in [
        "jwt $.note",
        "bearer $.header",
        "pem_private_key $.pem",
        "card_number $.card",
        "card_number $.cardNum",
        "aws_access_key $.aws",
        "url_userinfo $.dsn",
    ] {
        assert!(fired.contains(&f.to_owned()), "{f} missing from {fired:?}");
    }
}

#[test]
fn secrets_in_keys_are_redacted_too() {
    let v = json_body(&json!({ JWT: 1 })).value.expect("stored");
    assert_eq!(v, json!({ REDACTED: 1 }));
}

#[test]
fn text_bodies_are_pattern_and_pair_redacted() {
    let v = stored(
        format!("login password=hunter2 with {JWT} id {UUID}").as_bytes(),
        Some("text/plain"),
    );
    assert_eq!(
        v,
        json!(format!(
            "login password=[REDACTED] with [REDACTED] id {UUID}"
        ))
    );
}

// ---- JSON inside strings -----------------------------------------------------------------

#[test]
fn json_inside_a_string_is_redacted_inside_and_stays_a_string() {
    let inner = r#"{"user": "bob", "password": "hunter2", "deeper": "{\"token\":\"t-1\"}"}"#;
    let out = json_body(&json!({"body": inner, "clean": "{\"a\": 1}"}));
    let v = out.value.expect("stored");
    let body = v["body"].as_str().expect("still a string");
    let parsed: Value = serde_json::from_str(body).expect("still JSON");
    assert_eq!(parsed["password"], REDACTED);
    assert_eq!(parsed["user"], "bob");
    let deeper: Value =
        serde_json::from_str(parsed["deeper"].as_str().expect("string")).expect("JSON");
    assert_eq!(deeper["token"], REDACTED);
    assert_eq!(
        v["clean"], "{\"a\": 1}",
        "a clean one is kept byte for byte"
    );
    let fired = rules_fired(&out.redactions);
    assert!(
        fired.contains(&"key:*password* $.body(json).password".to_owned()),
        "{fired:?}"
    );
    assert!(
        fired.contains(&"key:*token* $.body(json).deeper(json).token".to_owned()),
        "{fired:?}"
    );
}

#[test]
fn unparseable_json_in_a_string_still_gets_pair_redaction() {
    let v = json_body(&json!({"log": r#"{"password":"hunter2", oops"#}))
        .value
        .expect("stored");
    assert_eq!(v["log"], r#"{"password":"[REDACTED]", oops"#);
}

// ---- forms and multipart -----------------------------------------------------------------

#[test]
fn form_body_becomes_an_object_with_fields_redacted() {
    let v = stored(
        b"a=1&a=2&password=x&b=%00&code=oauth-code&client_secret=cs&note=Bearer+abcdefghijk",
        Some("application/x-www-form-urlencoded"),
    );
    assert_eq!(
        v,
        json!({"a": ["1", "2"], "password": REDACTED, "b": "\u{FFFD}", "code": REDACTED,
               "client_secret": REDACTED, "note": "Bearer [REDACTED]"})
    );
}

#[test]
fn multipart_fields_are_redacted_files_described() {
    let body = "--B\r\nContent-Disposition: form-data; name=\"user\"\r\n\r\nbob\r\n\
        --B\r\nContent-Disposition: form-data; name=\"api_key\"\r\n\r\nmp-canary\r\n\
        --B\r\nContent-Disposition: form-data; name=\"cfg\"\r\nContent-Type: application/json\r\n\r\n{\"token\":\"t\",\"a\":1}\r\n\
        --B\r\nContent-Disposition: form-data; name=\"up\"; filename=\"k.pem\"\r\nContent-Type: application/x-pem-file\r\n\r\nfile-canary\r\n--B--\r\n";
    let v = stored(body.as_bytes(), Some("multipart/form-data; boundary=B"));
    assert_eq!(v["user"], "bob");
    assert_eq!(v["api_key"], REDACTED);
    assert_eq!(v["cfg"], json!({"token": REDACTED, "a": 1}));
    assert_eq!(v["up"]["_file"]["filename"], "k.pem");
    assert!(!v.to_string().contains("canary"), "{v}");
    let v = stored(b"garbage", Some("multipart/form-data; boundary=B"));
    assert_eq!(v["_descriptor"]["multipart"], "unparseable");
}

// ---- Content-Encoding ----------------------------------------------------------------------

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).expect("write");
    e.finish().expect("finish")
}

fn encoded(bytes: &[u8], encoding: &str, cap: usize) -> Stored {
    s().payload(
        BodySample {
            content_encoding: Some(encoding),
            ..sample(bytes, Some("application/json"))
        },
        cap,
    )
}

#[test]
fn compressed_bodies_are_decoded_then_redacted() {
    let body = br#"{"password":"gz-canary","a":1}"#;
    let v = encoded(&gzip(body), "gzip", 1024).value.expect("stored");
    assert_eq!(v, json!({"password": REDACTED, "a": 1}));
    let mut br = Vec::new();
    {
        let mut w = brotli::CompressorWriter::new(&mut br, 4096, 5, 22);
        w.write_all(body).expect("write");
    }
    let v = encoded(&br, "br", 1024).value.expect("stored");
    assert_eq!(v, json!({"password": REDACTED, "a": 1}));
}

#[test]
fn undecodable_or_unknown_encodings_are_descriptors() {
    let v = encoded(b"\x1f\x8b\x08garbage", "gzip", 1024)
        .value
        .expect("stored");
    assert_eq!(v["_descriptor"]["content_encoding"], "gzip");
    assert!(v["_descriptor"]["reason"].is_string());
    let v = encoded(b"zstd-bytes", "zstd", 1024).value.expect("stored");
    assert_eq!(v["_descriptor"]["content_encoding"], "zstd");
}

#[test]
fn a_compression_bomb_stops_at_the_decode_cap() {
    let spec = RuleSpec {
        max_decoded_bytes: 10_000,
        ..RuleSpec::default()
    };
    let san = Sanitizer::try_new(&spec).expect("valid");
    let bomb = gzip(&vec![b' '; 50_000_000]);
    let out = san.payload(
        BodySample {
            content_encoding: Some("gzip"),
            ..sample(&bomb, Some("text/plain"))
        },
        1000,
    );
    let v = out.value.expect("stored");
    assert_eq!(v["_truncated"]["cut"], true);
    assert!(size(&v) <= 1000 + MARKER_OVERHEAD);
}

#[test]
fn brotli_and_deflate_bombs_stop_at_the_decode_cap_too() {
    let spec = RuleSpec {
        max_decoded_bytes: 10_000,
        ..RuleSpec::default()
    };
    let san = Sanitizer::try_new(&spec).expect("valid");
    let zeros = vec![b'0'; 20_000_000];
    let mut br = Vec::new();
    {
        let mut w = brotli::CompressorWriter::new(&mut br, 4096, 9, 22);
        w.write_all(&zeros).expect("compress");
    }
    let mut deflate = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    deflate.write_all(&zeros).expect("compress");
    let deflate = deflate.finish().expect("finish");
    for (encoding, bomb) in [("br", br), ("deflate", deflate)] {
        assert!(bomb.len() < 200_000, "{encoding}: {} bytes", bomb.len());
        let out = san.payload(
            BodySample {
                content_encoding: Some(encoding),
                ..sample(&bomb, Some("text/plain"))
            },
            1000,
        );
        let v = out.value.expect("stored");
        assert_eq!(v["_truncated"]["cut"], true, "{encoding}: {v}");
        assert!(size(&v) <= 1000 + MARKER_OVERHEAD, "{encoding}");
    }
}

// ---- truncation --------------------------------------------------------------------------

#[test]
fn large_json_keeps_structure_valid_within_cap() {
    let items: Vec<Value> = (0..2000)
        .map(|i| json!({"json": {"id": i, "email": format!("u{i}@example.com"), "password": "p"}}))
        .collect();
    let body = json!({"executionId": "9", "data": items, "html": "x".repeat(50_000)});
    let bytes = body.to_string();
    let decoded = gzip(bytes.as_bytes());
    let out = encoded(&decoded, "gzip", 4096);
    assert!(out.truncated);
    let v = out.value.expect("stored");
    assert!(size(&v) <= 4096 + MARKER_OVERHEAD, "{}", size(&v));
    assert_eq!(v["executionId"], "9", "keys kept, in place");
    assert_eq!(v["data"][0]["json"]["password"], REDACTED);
    assert!(v["html"].as_str().expect("string").ends_with(ELLIPSIS));
    let t = &v["_truncated"];
    assert_eq!(t["kind"], "structure");
    assert_eq!(t["original_bytes"], decoded.len());
    assert_eq!(t["limit_bytes"], 4096);
    assert!(t["items_dropped"].as_u64().expect("count") > 0);
}

#[test]
fn a_top_level_array_is_wrapped() {
    let body: Vec<Value> = (0..500).map(|i| json!({"i": i})).collect();
    let out = stored_with(
        &s(),
        Value::Array(body).to_string().as_bytes(),
        Some("application/json"),
        200,
    );
    let v = out.value.expect("stored");
    assert!(v["value"].is_array() && v["_truncated"].is_object(), "{v}");
    assert!(size(&v) <= 200 + MARKER_OVERHEAD);
}

#[test]
fn cut_json_keeps_its_structure_and_redacts_the_cut_secret() {
    let body = br#"{"user":"bob","password":"hunter2-canary-and-more","note":"see ghp_0123456789abcdefghij"#;
    for cut_at in [30, 40, body.len()] {
        let out = s().payload(
            BodySample {
                bytes: &body[..cut_at],
                total_bytes: Some(10_000),
                cut: true,
                content_type: Some("application/json"),
                content_encoding: None,
            },
            1024,
        );
        let v = out.value.expect("stored");
        let text = v.to_string();
        assert!(!text.contains("hunter"), "{cut_at}: {text}");
        assert!(!text.contains("ghp_"), "{cut_at}: {text}");
        assert_eq!(v["user"], "bob");
        assert_eq!(v["_truncated"]["cut"], true);
        assert_eq!(v["_truncated"]["original_bytes"], 10_000);
    }
}

#[test]
fn cut_text_becomes_a_redacted_preview() {
    let body = format!(
        "Authorization: Bearer {JWT}\nthen a long tail {}",
        "y".repeat(100)
    );
    let out = s().payload(
        BodySample {
            bytes: &body.as_bytes()[..60],
            total_bytes: None,
            cut: true,
            content_type: Some("text/plain"),
            content_encoding: None,
        },
        1024,
    );
    let v = out.value.expect("stored");
    assert_eq!(v["_truncated"]["kind"], "preview");
    assert_eq!(v["_truncated"]["original_bytes"], Value::Null);
    assert!(
        !v["preview"].as_str().expect("preview").contains("eyJ"),
        "{v}"
    );
}

#[test]
fn stored_text_never_exceeds_cap_even_when_escaping_grows_it() {
    let ctrl = "\u{1}".repeat(1000);
    let v = payload_for_storage(sample(ctrl.as_bytes(), Some("text/plain")), 600).expect("stored");
    assert!(size(&v) <= 600 + MARKER_OVERHEAD, "{}", size(&v));
    assert!(v.get("_truncated").is_some());
}

#[test]
fn the_indicator_fits_its_overhead_at_its_largest() {
    let marker = json!({"_truncated": {"original_bytes": u64::MAX, "limit_bytes": u64::MAX,
        "cut": false, "kind": "structure", "stored_bytes": u64::MAX, "strings_shortened": u64::MAX,
        "items_dropped": u64::MAX, "keys_dropped": u64::MAX}, "value": null});
    // Everything but the stored value itself (`null`).
    assert!(size(&marker) - 4 <= MARKER_OVERHEAD, "{}", size(&marker));
}

// ---- configuration -------------------------------------------------------------------------

fn spec(f: impl FnOnce(&mut RuleSpec)) -> RuleSpec {
    let mut s = RuleSpec::default();
    f(&mut s);
    s
}

#[test]
fn configured_keys_patterns_and_replacement() {
    let san = Sanitizer::try_new(&spec(|s| {
        s.replacement = "***".into();
        s.add_keys = vec!["ssn".into(), "*iban*".into()];
        s.remove_keys = vec!["pin".into()];
        s.add_patterns = vec![PatternSpec {
            name: "order_secret".into(),
            regex: "ORD-[0-9]{6}".into(),
        }];
        s.remove_patterns = vec!["aws_access_key".into()];
    }))
    .expect("valid");
    let out = san.payload(
        sample(
            br#"{"SSN":"1","myIban":"2","pin":"1234","ref":"x ORD-123456 y","aws":"AKIAIOSFODNN7EXAMPLE","password":"p"}"#,
            Some("application/json"),
        ),
        4096,
    );
    let v = out.value.expect("stored");
    assert_eq!(
        v,
        json!({"SSN": "***", "myIban": "***", "pin": "1234", "ref": "x *** y",
               "aws": "AKIAIOSFODNN7EXAMPLE", "password": "***"})
    );
    assert!(rules_fired(&out.redactions).contains(&"order_secret $.ref".to_owned()));
    assert_eq!(san.target("/a", Some("token=1")).0, "/a?token=***");
}

#[test]
fn every_configuration_problem_is_reported() {
    let Err(problems) = Sanitizer::try_new(&spec(|s| {
        s.replacement = String::new();
        s.add_keys = vec!["**".into()];
        s.remove_keys = vec!["not-a-rule".into()];
        s.add_patterns = vec![
            PatternSpec {
                name: "Bad Name".into(),
                regex: "x".into(),
            },
            PatternSpec {
                name: "jwt".into(),
                regex: "(".into(),
            },
            PatternSpec {
                name: "empty".into(),
                regex: "a*".into(),
            },
        ];
        s.remove_patterns = vec!["nope".into()];
        s.max_decoded_bytes = 0;
    })) else {
        panic!("expected problems");
    };
    let all = problems.join("\n");
    for needle in [
        "sanitize.replacement",
        "sanitize.add_keys",
        "sanitize.remove_keys",
        "add_patterns[0]` name",
        "add_patterns[1]` name \"jwt\" is already taken",
        "add_patterns[1]` regex",
        "matches the empty string",
        "sanitize.remove_patterns",
        "max_decoded_bytes",
    ] {
        assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
    }
}

#[test]
fn a_replacement_that_a_pattern_matches_is_rejected() {
    let e = Sanitizer::try_new(&spec(|s| s.replacement = "Bearer abcdefghijk".into()))
        .expect_err("unstable replacement");
    assert!(e[0].contains("bearer"), "{e:?}");
}

#[test]
fn route_overrides_stack_on_the_global_rules() {
    let global = Sanitizer::try_new(&spec(|s| s.add_keys = vec!["ssn".into()])).expect("valid");
    let route = global
        .for_route(&RouteRules {
            replacement: Some("<hidden>".into()),
            add_keys: vec!["orderNote".into()],
            remove_keys: vec!["ssn".into(), "*signature*".into()],
            add_patterns: vec![PatternSpec {
                name: "ticket".into(),
                regex: "TCK-[0-9]+".into(),
            }],
            remove_patterns: vec!["card_number".into()],
        })
        .expect("valid");
    let v = route
        .payload(
            sample(
                br#"{"ssn":"1","orderNote":"n","signature":"s","t":"TCK-1","c":"4111111111111111"}"#,
                Some("application/json"),
            ),
            4096,
        )
        .value
        .expect("stored");
    assert_eq!(
        v,
        json!({"ssn": "1", "orderNote": "<hidden>", "signature": "s", "t": "<hidden>", "c": "4111111111111111"})
    );
    // The global rules are unchanged.
    assert!(global.is_secret_key("ssn") && global.is_secret_key("signature"));
    assert!(global
        .for_route(&RouteRules {
            remove_keys: vec!["nope".into()],
            ..RouteRules::default()
        })
        .is_err());
}

#[test]
fn redaction_record_shape() {
    let mut a = Redactions::default();
    for i in 0..100 {
        a.add("key:*token*", &format!("$.k{i}"));
    }
    a.add("key:*token*", "$.k0");
    let b = Redactions::default();
    let rec = redactions_record(&[("request_payload", &a), ("http_target", &b)]).expect("some");
    let list = rec["request_payload"].as_array().expect("list");
    assert_eq!(list.len(), MAX_RECORDED + 1);
    assert_eq!(
        list[0],
        json!({"rule": "key:*token*", "path": "$.k0", "count": 2})
    );
    assert_eq!(list[MAX_RECORDED], json!({"omitted": 100 - MAX_RECORDED}));
    assert!(rec.get("http_target").is_none());
    assert_eq!(redactions_record(&[("x", &b)]), None);
}

#[test]
fn free_text_columns() {
    let (v, r) = s().column("workflow_id", &format!("wf/{JWT}"));
    assert_eq!(v, "wf/[REDACTED]");
    assert_eq!(rules_fired(&r), vec!["jwt workflow_id".to_owned()]);
    assert_eq!(s().column("user_id", UUID).0, UUID);
}

#[test]
fn secrets_in_json_nested_inside_strings_are_redacted_at_any_depth() {
    // Each level doubles the escaping: depth 10 already has runs of 1,023 backslashes.
    for depth in [1, 4, 5, 7, 10] {
        let mut v = json!({"password": "hunter2", "note": "ok"});
        for _ in 0..depth {
            v = json!({"payload": v.to_string()});
        }
        let out = json_body(&v).value.expect("stored").to_string();
        assert!(!out.contains("hunter2"), "depth {depth}: {out}");
        assert!(out.contains("ok"), "depth {depth}: the rest is kept");
    }
}
