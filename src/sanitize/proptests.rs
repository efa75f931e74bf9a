//! Property tests: canaries planted under secret keys, in free text and in JSON-in-strings
//! never survive (whole or cut, at any cap); innocent values are untouched; redaction is
//! idempotent; the stored value is valid JSON within the cap; no input makes it panic.

use proptest::prelude::*;
use serde_json::{json, Map, Value};

use super::*;

const SAFE_KEYS: &[&str] = &[
    "user",
    "name",
    "items",
    "id",
    "data",
    "json",
    "node",
    "status",
    "message",
    "workflow",
    "count",
    "email",
    "createdAt",
    "value",
    "list",
    "url",
    "title",
    "body",
];

const SECRET_KEYS: &[&str] = &[
    "password",
    "Password",
    "PASS_WORD",
    "userPassword",
    "refreshToken",
    "refresh_token",
    "apiKey",
    "x-n8n-api-key",
    "client_secret",
    "authorization",
    "cookie",
    "secret",
    "token",
    "private_key",
    "credentials",
    "otp",
    "cvv",
    "accessToken",
    "Set-Cookie",
];

/// Compiled once: building the rules is the slow part in an unoptimized test build.
static SAN: std::sync::LazyLock<Sanitizer> =
    std::sync::LazyLock::new(|| Sanitizer::default_rules().expect("defaults compile"));

fn san() -> &'static Sanitizer {
    &SAN
}

fn safe_key() -> impl Strategy<Value = String> {
    prop::sample::select(SAFE_KEYS).prop_map(str::to_owned)
}

fn safe_text() -> impl Strategy<Value = String> {
    "[a-z]{0,8}( [a-z]{1,8}){0,2}"
}

/// Innocent JSON: safe keys, letters-only text, small numbers.
fn safe_tree() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (0u64..1_000_000_000_000).prop_map(|n| json!(n)),
        // Two decimals: round-trips exactly through JSON text.
        (-100_000i64..100_000).prop_map(|n| json!(n as f64 / 100.0)),
        safe_text().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(safe_key(), inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// A secret, as planted; `core` is what must never be stored.
#[derive(Debug, Clone)]
struct Secret {
    text: String,
    core: String,
}

fn canary_id() -> impl Strategy<Value = String> {
    "[a-z0-9]{10}".prop_map(|s| format!("CNRY{s}"))
}

fn luhn_complete(prefix: &str) -> String {
    (0..10)
        .map(|d| format!("{prefix}{d}"))
        .find(|c| rules::luhn_valid(c.as_bytes()))
        .unwrap_or_default()
}

/// Secrets recognizable without a key: one per built-in pattern.
fn free_secret() -> impl Strategy<Value = Secret> {
    let b64 = "[A-Za-z0-9_-]{8,30}";
    prop_oneof![
        (b64, b64, canary_id()).prop_map(|(a, b, c)| {
            let jwt = format!("eyJ{a}.eyJ{b}.{c}");
            Secret {
                text: jwt.clone(),
                core: jwt,
            }
        }),
        canary_id().prop_map(|c| Secret {
            text: format!("Bearer {c}"),
            core: c
        }),
        canary_id().prop_map(|c| Secret {
            text: format!(
                "-----BEGIN RSA PRIVATE KEY-----\nMIIE{c}\n-----END RSA PRIVATE KEY-----"
            ),
            core: format!("MIIE{c}"),
        }),
        "[0-9]{14}".prop_map(|d| {
            let card = luhn_complete(&format!("4{d}"));
            Secret {
                text: card.clone(),
                core: card,
            }
        }),
        ("[0-9]{4}", "[0-9]{4}", "[0-9]{4}", "[0-9]{3}").prop_map(|(a, b, c, d)| {
            let card = luhn_complete(&format!("5{d}{a}{b}{c}"));
            let spaced = format!(
                "{} {} {} {}",
                &card[..4],
                &card[4..8],
                &card[8..12],
                &card[12..]
            );
            Secret {
                text: spaced.clone(),
                core: card[4..].to_owned(),
            }
        }),
        "[A-Z0-9]{12}".prop_map(|k| {
            let key = format!("AKIACNRY{k}");
            Secret {
                text: key.clone(),
                core: key,
            }
        }),
        "[A-Za-z0-9]{32}".prop_map(|t| {
            let tok = format!("ghp_CNRY{t}");
            Secret {
                text: tok.clone(),
                core: tok,
            }
        }),
        canary_id().prop_map(|c| Secret {
            text: format!("postgres://app:{c}@db/x"),
            core: c
        }),
        canary_id().prop_map(|c| Secret {
            text: format!("password={c}"),
            core: c
        }),
    ]
}

/// Where a secret goes.
#[derive(Debug, Clone)]
enum Plant {
    /// `{ <secret key>: canary }`.
    UnderKey(String, String),
    /// `{ <safe key>: "text secret text" }`.
    InText(String, String, Secret, String),
    /// `{ <safe key>: "{\"<secret key>\": \"canary\"}" }` — JSON in a string.
    InJsonString(String, String, String),
}

fn plant() -> impl Strategy<Value = (usize, Plant)> {
    let secret_key = prop::sample::select(SECRET_KEYS).prop_map(str::to_owned);
    let p = prop_oneof![
        (secret_key.clone(), canary_id()).prop_map(|(k, c)| Plant::UnderKey(k, c)),
        (safe_key(), safe_text(), free_secret(), safe_text())
            .prop_map(|(k, a, s, b)| Plant::InText(k, a, s, b)),
        (safe_key(), secret_key, canary_id()).prop_map(|(k, s, c)| Plant::InJsonString(k, s, c)),
    ];
    (any::<usize>(), p)
}

/// Plants into the `at`-th object of `v` (the root is wrapped in one if it is not an object);
/// returns the cores that must not survive.
fn plant_all(v: &mut Value, plants: &[(usize, Plant)]) -> Vec<String> {
    if !v.is_object() {
        *v = json!({ "data": v.take() });
    }
    let mut cores = Vec::new();
    for (at, p) in plants {
        let mut objects = Vec::new();
        collect_objects(v, &mut objects);
        let Some(target) = objects.get(at % objects.len().max(1)).copied() else {
            continue;
        };
        let Some(obj) = pointer_mut(v, target) else {
            continue;
        };
        match p {
            Plant::UnderKey(k, c) => {
                obj.insert(k.clone(), json!(c));
                cores.push(c.clone());
            }
            Plant::InText(k, a, s, b) => {
                obj.insert(k.clone(), json!(format!("{a} {} {b}", s.text)));
                cores.push(s.core.clone());
            }
            Plant::InJsonString(k, s, c) => {
                obj.insert(k.clone(), json!(json!({ s: c, "ok": 1 }).to_string()));
                cores.push(c.clone());
            }
        }
    }
    cores
}

fn collect_objects(v: &Value, out: &mut Vec<usize>) {
    // Objects numbered in pre-order; `pointer_mut` walks the same order.
    fn walk(v: &Value, n: &mut usize, out: &mut Vec<usize>) {
        match v {
            Value::Object(m) => {
                out.push(*n);
                *n += 1;
                m.values().for_each(|c| walk(c, n, out));
            }
            Value::Array(a) => a.iter().for_each(|c| walk(c, n, out)),
            _ => {}
        }
    }
    walk(v, &mut 0, out);
}

fn pointer_mut(v: &mut Value, target: usize) -> Option<&mut Map<String, Value>> {
    fn walk<'a>(
        v: &'a mut Value,
        n: &mut usize,
        target: usize,
    ) -> Option<&'a mut Map<String, Value>> {
        match v {
            Value::Object(m) => {
                if *n == target {
                    return Some(m);
                }
                *n += 1;
                m.values_mut().find_map(|c| walk(c, n, target))
            }
            Value::Array(a) => a.iter_mut().find_map(|c| walk(c, n, target)),
            _ => None,
        }
    }
    walk(v, &mut 0, target)
}

fn assert_no_core(stored: &str, cores: &[String]) -> Result<(), TestCaseError> {
    for c in cores {
        prop_assert!(!stored.contains(c.as_str()), "{c:?} survived in {stored}");
    }
    Ok(())
}

/// Fragments that combine into text exercising every pattern and their overlaps.
fn tricky_text() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop::sample::select(vec![
            "Bearer ",
            "basic ",
            "YWxhZGRpbjpvcGVu",
            "password=",
            "token: ",
            "\"",
            "'",
            "\\\"",
            "eyJhbGciOiJIUzI1NiJ9",
            ".",
            "4111 1111 1111 1111",
            "4111",
            " ",
            "-",
            "AKIAIOSFODNN7EXAMPLE",
            "https://u:p@h/",
            "&",
            "?",
            "code=",
            "=",
            ":",
            "-----BEGIN PRIVATE KEY-----",
            "-----END PRIVATE KEY-----",
            "[REDACTED]",
            "x",
            "1",
            "{",
            "}",
            "ghp_",
            "abcdefghij",
            "\n",
            "é",
            "\u{0}",
        ]),
        0..16,
    )
    .prop_map(|parts| parts.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn planted_canaries_never_survive(
        tree in safe_tree(),
        plants in prop::collection::vec(plant(), 1..6),
        cap in 64usize..4096,
    ) {
        let mut v = tree;
        let cores = plant_all(&mut v, &plants);
        let bytes = v.to_string();
        let s = san();
        let out = s.payload(sample(bytes.as_bytes(), false), cap);
        let stored = out.value.expect("stored").to_string();
        assert_no_core(&stored, &cores)?;
        prop_assert!(!out.redactions.is_empty());
        assert_no_core(&out.redactions.to_json().to_string(), &cores)?;
    }

    #[test]
    fn planted_canaries_never_survive_a_cut_body(
        tree in safe_tree(),
        plants in prop::collection::vec(plant(), 1..6),
        cut_at in any::<prop::sample::Index>(),
        cap in 64usize..4096,
    ) {
        let mut v = tree;
        let cores = plant_all(&mut v, &plants);
        let bytes = v.to_string();
        let at = cut_at.index(bytes.len() + 1);
        let s = san();
        let stored = s
            .payload(sample(&bytes.as_bytes()[..at], true), cap)
            .value
            .map(|v| v.to_string())
            .unwrap_or_default();
        // A cut can only remove: no whole canary may remain, and no prefix of one longer
        // than what a cut token keeps (nothing: the partial last token is dropped).
        assert_no_core(&stored, &cores)?;
    }

    #[test]
    fn innocent_values_are_unchanged(tree in safe_tree()) {
        let s = san();
        let mut v = tree.clone();
        let found = s.json(&mut v);
        prop_assert_eq!(&v, &tree);
        prop_assert!(found.is_empty(), "{:?}", found);
        let out = s.payload(sample(tree.to_string().as_bytes(), false), 1 << 20);
        prop_assert_eq!(out.value, Some(tree));
    }

    #[test]
    fn redaction_is_idempotent(
        tree in safe_tree(),
        plants in prop::collection::vec(plant(), 0..6),
        text in tricky_text(),
    ) {
        let s = san();
        let mut v = tree;
        plant_all(&mut v, &plants);
        v["tricky"] = json!(text);
        s.json(&mut v);
        let once = v.clone();
        let again = s.json(&mut v);
        prop_assert_eq!(&v, &once);
        prop_assert!(again.is_empty(), "second pass fired {:?}", again);
    }

    #[test]
    fn text_redaction_is_idempotent(text in tricky_text()) {
        let s = san();
        let (once, _) = s.column("t", &text);
        let (twice, found) = s.column("t", &once);
        prop_assert_eq!(&once, &twice, "second pass fired {:?}", found);
    }

    #[test]
    fn stored_payload_is_valid_json_within_the_cap(
        tree in safe_tree(),
        plants in prop::collection::vec(plant(), 0..4),
        text in tricky_text(),
        cap in 16usize..2048,
        cut_at in any::<prop::sample::Index>(),
        cut in any::<bool>(),
    ) {
        let mut v = tree;
        plant_all(&mut v, &plants);
        v["tricky"] = json!(text);
        let bytes = v.to_string();
        let at = if cut { cut_at.index(bytes.len() + 1) } else { bytes.len() };
        let out = san().payload(sample(&bytes.as_bytes()[..at], cut), cap);
        if let Some(stored) = out.value {
            let text = serde_json::to_string(&stored).expect("serializes");
            prop_assert!(text.len() <= cap + MARKER_OVERHEAD, "{} > {cap}: {text}", text.len());
            let back: Value = serde_json::from_str(&text).expect("valid JSON");
            prop_assert_eq!(&back, &stored);
            prop_assert_eq!(out.truncated, stored.get("_truncated").is_some());
            prop_assert!(!text.contains('\0'));
        }
    }

    #[test]
    fn never_panics_on_arbitrary_bytes(
        bytes in prop::collection::vec(any::<u8>(), 0..2048),
        ctype in prop::sample::select(vec![
            None, Some("application/json"), Some("text/plain"), Some("application/x-www-form-urlencoded"),
            Some("multipart/form-data; boundary=B"), Some("application/octet-stream"), Some("text/html; charset=utf-8"),
        ]),
        encoding in prop::sample::select(vec![None, Some("gzip"), Some("deflate"), Some("br"), Some("gzip, br"), Some("x")]),
        cut in any::<bool>(),
        cap in 0usize..2048,
    ) {
        let s = san();
        let out = s.payload(
            BodySample { bytes: &bytes, total_bytes: None, cut, content_type: ctype, content_encoding: encoding },
            cap,
        );
        if let Some(v) = out.value {
            let text = serde_json::to_string(&v).expect("serializes");
            prop_assert!(!text.contains("\\u0000"));
        }
    }

    #[test]
    fn never_panics_on_arbitrary_structured_text(
        text in prop::collection::vec(
            prop::sample::select(vec![
                "{", "}", "[", "]", "\"", "\\", "\\u", "d800", "00", ":", ",", "--B", "\r\n",
                "Content-Disposition: form-data; name=\"a\"", "\r\n\r\n", "x", "é", "1", "-", "e",
                "true", "nul", "password", "=", "&", "%", "%zz",
            ]),
            0..40,
        ).prop_map(|p| p.concat()),
        cut in any::<bool>(),
        cap in 0usize..512,
    ) {
        let s = san();
        for ctype in ["application/json", "multipart/form-data; boundary=B", "application/x-www-form-urlencoded", "text/plain"] {
            s.payload(
                BodySample { bytes: text.as_bytes(), total_bytes: None, cut, content_type: Some(ctype), content_encoding: None },
                cap,
            );
        }
        let (path, query) = text.split_once('?').unwrap_or((&text, ""));
        s.target(path, Some(query));
        s.url(&text);
    }

    #[test]
    fn never_panics_on_arbitrary_strings(text in any::<String>()) {
        let s = san();
        s.column("c", &text);
        s.target(&text, Some(&text));
        s.url(&text);
        let _ = lenient::parse_prefix(&text);
        let _ = multipart::parse(text.as_bytes(), "B", true);
    }
}

fn sample(bytes: &[u8], cut: bool) -> BodySample<'_> {
    BodySample {
        bytes,
        total_bytes: None,
        cut,
        content_type: Some("application/json"),
        content_encoding: None,
    }
}
