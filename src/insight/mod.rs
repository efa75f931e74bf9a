//! Agent-oriented bundles over stored traces (DATA-002: "Future AI agents will query
//! traces to understand past failures and fixes, learn optimal request patterns ... identify
//! recurring issues"). This module is the pure part: rows and counts in, compact answers out.
//! The SQL that feeds it lives in `crate::record::store`; the front-ends (admin API, CLI) only
//! render what is built here.
//!
//! - [`normalise_detail`]: an error detail with ids, numbers, timestamps and UUIDs masked, so
//!   the same failure of different requests groups together;
//! - [`payload_shape`] / [`ShapeSummary`]: the shape of request payloads (keys, JSON types,
//!   sizes) and what successful requests of a workflow typically look like;
//! - [`compare_payloads`]: what differs between a failed request and the latest successful one
//!   (keys present/absent, value types, sizes);
//! - [`trend`], [`percentile`]: small statistics used by the bundles.

pub(crate) mod bundle;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

use regex::Regex;
use serde::Serialize;
use serde_json::Value;

/// Masks, applied in order (the most specific first, so a UUID is not eaten as numbers).
fn masks() -> &'static [(Regex, &'static str)] {
    static MASKS: OnceLock<Vec<(Regex, &'static str)>> = OnceLock::new();
    MASKS.get_or_init(|| {
        let m = |re: &str, with: &'static str| {
            // The patterns are constants of this file; a typo fails the unit tests.
            (
                Regex::new(re).unwrap_or_else(|e| panic!("mask {re}: {e}")),
                with,
            )
        };
        vec![
            m(
                r"(?i)\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b",
                "<uuid>",
            ),
            m(
                r"\b\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?",
                "<time>",
            ),
            m(r"\b\d{4}-\d{2}-\d{2}\b", "<date>"),
            m(r"(?i)\b0x[0-9a-f]+\b", "<hex>"),
            // Hex runs of 16+ chars with at least one digit: hashes, request ids, tokens.
            m(r"(?i)\b(?:[a-f]*\d[a-f]*){1}[0-9a-f]{15,}\b", "<id>"),
            // Identifiers that mix letters and digits (usr_42a9, exec-1234).
            m(r"\b[A-Za-z]+[_-][A-Za-z0-9]*\d[A-Za-z0-9]*\b", "<id>"),
            m(r"-?\b\d+(\.\d+)?\b", "<n>"),
        ]
    })
}

/// The longest normalised detail kept (characters); the rest of a long message rarely groups.
pub(crate) const MAX_NORMALISED_CHARS: usize = 300;

/// An error detail with what varies between occurrences masked: UUIDs → `<uuid>`, timestamps →
/// `<time>`, dates → `<date>`, hex and long hex ids → `<hex>`/`<id>`, ids mixing letters and
/// digits → `<id>`, numbers → `<n>`. Whitespace is collapsed; the result is cut at
/// [`MAX_NORMALISED_CHARS`] characters.
pub(crate) fn normalise_detail(detail: &str) -> String {
    let mut s = detail.to_owned();
    for (re, with) in masks() {
        s = re.replace_all(&s, *with).into_owned();
    }
    let s = s.split_whitespace().collect::<Vec<_>>().join(" ");
    s.chars().take(MAX_NORMALISED_CHARS).collect()
}

/// A JSON value's type as an agent reads it.
pub(crate) fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// The compact JSON size of a value in bytes.
pub(crate) fn json_size(v: &Value) -> usize {
    serde_json::to_vec(v).map(|b| b.len()).unwrap_or(0)
}

/// How deep [`payload_shape`] descends; deeper keys are summarised by their parent.
pub(crate) const MAX_SHAPE_DEPTH: usize = 4;
/// How many keys [`payload_shape`] records per payload (wide payloads are cut, not walked).
pub(crate) const MAX_SHAPE_KEYS: usize = 200;

/// One key of a payload: its JSON type and its serialized size in bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Field {
    #[serde(rename = "type")]
    pub ty: &'static str,
    pub bytes: usize,
}

/// The shape of one payload: JSON pointer (RFC 6901) → type and size. Objects are descended
/// to [`MAX_SHAPE_DEPTH`]; arrays are one key (their elements vary in number, not in kind).
pub(crate) fn payload_shape(payload: &Value) -> BTreeMap<String, Field> {
    let mut out = BTreeMap::new();
    walk("", payload, 0, &mut out);
    out
}

fn walk(path: &str, v: &Value, depth: usize, out: &mut BTreeMap<String, Field>) {
    if let Value::Object(map) = v {
        if depth < MAX_SHAPE_DEPTH {
            for (k, x) in map {
                if out.len() >= MAX_SHAPE_KEYS {
                    return;
                }
                let p = format!("{path}/{}", k.replace('~', "~0").replace('/', "~1"));
                out.insert(
                    p.clone(),
                    Field {
                        ty: json_type(x),
                        bytes: json_size(x),
                    },
                );
                walk(&p, x, depth + 1, out);
            }
        }
    }
}

/// A type that changed between two payloads at the same key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct TypeChange {
    pub path: String,
    pub failed: &'static str,
    pub succeeded: &'static str,
}

/// A key whose size differs a lot between two payloads (at least 2x and 64 bytes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct SizeChange {
    pub path: String,
    pub failed_bytes: usize,
    pub succeeded_bytes: usize,
}

/// What differs between a failed request payload and a successful one of the same workflow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PayloadComparison {
    /// Keys the failed request has and the successful one had not.
    pub only_in_failed: Vec<String>,
    /// Keys the successful request had and the failed one has not.
    pub only_in_succeeded: Vec<String>,
    pub type_changes: Vec<TypeChange>,
    pub size_changes: Vec<SizeChange>,
    pub failed_bytes: usize,
    pub succeeded_bytes: usize,
}

#[cfg(test)]
impl PayloadComparison {
    /// True when the two payloads have the same shape (values may still differ).
    pub(crate) fn same_shape(&self) -> bool {
        self.only_in_failed.is_empty()
            && self.only_in_succeeded.is_empty()
            && self.type_changes.is_empty()
            && self.size_changes.is_empty()
    }
}

fn big_size_change(a: usize, b: usize) -> bool {
    let (lo, hi) = (a.min(b), a.max(b));
    hi - lo >= 64 && hi >= lo.saturating_mul(2)
}

/// Compares the shapes of a failed and a successful request payload. A missing payload is
/// `null` (no keys).
pub(crate) fn compare_payloads(
    failed: Option<&Value>,
    succeeded: Option<&Value>,
) -> PayloadComparison {
    let null = Value::Null;
    let (f, s) = (failed.unwrap_or(&null), succeeded.unwrap_or(&null));
    let (fs, ss) = (payload_shape(f), payload_shape(s));
    let mut out = PayloadComparison {
        failed_bytes: json_size(f),
        succeeded_bytes: json_size(s),
        ..Default::default()
    };
    for (path, ff) in &fs {
        match ss.get(path) {
            None => out.only_in_failed.push(path.clone()),
            Some(sf) => {
                if ff.ty != sf.ty {
                    out.type_changes.push(TypeChange {
                        path: path.clone(),
                        failed: ff.ty,
                        succeeded: sf.ty,
                    });
                } else if big_size_change(ff.bytes, sf.bytes) {
                    out.size_changes.push(SizeChange {
                        path: path.clone(),
                        failed_bytes: ff.bytes,
                        succeeded_bytes: sf.bytes,
                    });
                }
            }
        }
    }
    out.only_in_succeeded = ss
        .keys()
        .filter(|p| !fs.contains_key(*p))
        .cloned()
        .collect();
    // A key absent on one side lists its children too; keep only the topmost.
    out.only_in_failed = topmost(out.only_in_failed);
    out.only_in_succeeded = topmost(out.only_in_succeeded);
    out
}

fn topmost(paths: Vec<String>) -> Vec<String> {
    let mut kept: Vec<String> = Vec::new();
    for p in paths {
        // BTreeMap order puts a parent before its children.
        if !kept
            .iter()
            .any(|k| p.starts_with(k.as_str()) && p[k.len()..].starts_with('/'))
        {
            kept.push(p);
        }
    }
    kept
}

/// The `q`-quantile (0..=1) of sorted values, nearest rank; `None` when empty.
pub(crate) fn percentile(sorted: &[i64], q: f64) -> Option<i64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize;
    sorted
        .get(rank.saturating_sub(1).min(sorted.len() - 1))
        .copied()
}

/// Sizes and durations as percentiles.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Percentiles {
    pub p50: i64,
    pub p90: i64,
    pub p99: i64,
    pub max: i64,
}

impl Percentiles {
    pub(crate) fn of(mut values: Vec<i64>) -> Option<Percentiles> {
        values.sort_unstable();
        Some(Percentiles {
            p50: percentile(&values, 0.5)?,
            p90: percentile(&values, 0.9)?,
            p99: percentile(&values, 0.99)?,
            max: *values.last()?,
        })
    }
}

/// One key across many successful payloads.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct KeyPattern {
    pub path: String,
    /// Share of the sampled payloads that had the key (0..=1, two decimals).
    pub presence: f64,
    /// JSON type → how many payloads had the key with that type.
    pub types: BTreeMap<&'static str, u64>,
    pub bytes: Percentiles,
}

/// The shape of many payloads: which keys they have, with which types and sizes.
#[derive(Debug, Default)]
pub(crate) struct ShapeSummary {
    samples: u64,
    keys: BTreeMap<String, (BTreeMap<&'static str, u64>, Vec<i64>)>,
    sizes: Vec<i64>,
}

impl ShapeSummary {
    pub(crate) fn add(&mut self, payload: Option<&Value>) {
        self.samples += 1;
        let null = Value::Null;
        let p = payload.unwrap_or(&null);
        self.sizes.push(json_size(p) as i64);
        for (path, f) in payload_shape(p) {
            let e = self.keys.entry(path).or_default();
            *e.0.entry(f.ty).or_default() += 1;
            e.1.push(f.bytes as i64);
        }
    }

    pub(crate) fn samples(&self) -> u64 {
        self.samples
    }

    /// Payload sizes in bytes.
    pub(crate) fn sizes(&self) -> Option<Percentiles> {
        Percentiles::of(self.sizes.clone())
    }

    /// The keys, most common first (then by path).
    pub(crate) fn keys(&self) -> Vec<KeyPattern> {
        let mut out: Vec<KeyPattern> = self
            .keys
            .iter()
            .filter_map(|(path, (types, bytes))| {
                let n: u64 = bytes.len() as u64;
                Some(KeyPattern {
                    path: path.clone(),
                    presence: (n as f64 / self.samples.max(1) as f64 * 100.0).round() / 100.0,
                    types: types.clone(),
                    bytes: Percentiles::of(bytes.clone())?,
                })
            })
            .collect();
        out.sort_by(|a, b| {
            b.presence
                .total_cmp(&a.presence)
                .then_with(|| a.path.cmp(&b.path))
        });
        out
    }

    /// The keys present in every sampled payload.
    pub(crate) fn required(&self) -> BTreeSet<String> {
        self.keys
            .iter()
            .filter(|(_, (_, b))| b.len() as u64 == self.samples && self.samples > 0)
            .map(|(p, _)| p.clone())
            .collect()
    }
}

/// Whether a failure is becoming more or less frequent: the window's second half against its
/// first half.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Trend {
    /// Only seen in the second half.
    New,
    /// At least 1.5x more often in the second half.
    Rising,
    /// At most 2/3 as often in the second half (0 included: it may have stopped).
    Falling,
    Steady,
}

pub(crate) fn trend(first_half: u64, second_half: u64) -> Trend {
    if first_half == 0 {
        return if second_half == 0 {
            Trend::Steady
        } else {
            Trend::New
        };
    }
    if second_half * 2 >= first_half * 3 {
        Trend::Rising
    } else if second_half * 3 <= first_half * 2 {
        Trend::Falling
    } else {
        Trend::Steady
    }
}

/// Keys whose values are payload-like (large, and shown as a preview when a bundle is cut).
const PAYLOAD_KEYS: &[&str] = &["requestPayload", "responsePayload", "value", "old", "new"];

/// A bundle within `budget` bytes of compact JSON, with `truncated` set on the top object:
/// payload-like values are first replaced by previews (2048, then 512, then 128 bytes), then
/// the longest lists lose their last elements, until it fits. Lists keep their order, so what
/// is cut is the tail (the oldest examples, the least common keys).
pub(crate) fn fit(mut v: Value, budget: usize) -> Value {
    // Room for `,"truncated":false` added at the end.
    let budget = budget.saturating_sub(20);
    let mut cut = false;
    for limit in [2048usize, 512, 128] {
        if json_size(&v) <= budget {
            break;
        }
        preview_payloads(&mut v, limit);
        cut = true;
    }
    while json_size(&v) > budget {
        if !pop_longest(&mut v) {
            break;
        }
        cut = true;
    }
    if let Value::Object(m) = &mut v {
        m.insert("truncated".into(), Value::Bool(cut));
    }
    v
}

fn preview_payloads(v: &mut Value, limit: usize) {
    match v {
        Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                if PAYLOAD_KEYS.contains(&k.as_str()) {
                    let taken = std::mem::take(x);
                    *x = crate::api::render::preview(taken, limit);
                } else {
                    preview_payloads(x, limit);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| preview_payloads(x, limit)),
        _ => {}
    }
}

/// Removes the last element of the array with the largest JSON text; false when there is no
/// non-empty array left.
fn pop_longest(v: &mut Value) -> bool {
    let mut best: Option<(usize, Vec<PathStep>)> = None;
    find_largest(v, &mut Vec::new(), &mut best);
    match best {
        Some((_, path)) => {
            let mut cur = v;
            for step in &path {
                cur = match (step, cur) {
                    (PathStep::Key(k), Value::Object(m)) => match m.get_mut(k) {
                        Some(x) => x,
                        None => return false,
                    },
                    (PathStep::Index(i), Value::Array(a)) => match a.get_mut(*i) {
                        Some(x) => x,
                        None => return false,
                    },
                    _ => return false,
                };
            }
            match cur {
                Value::Array(a) => a.pop().is_some(),
                _ => false,
            }
        }
        None => false,
    }
}

#[derive(Clone)]
enum PathStep {
    Key(String),
    Index(usize),
}

fn find_largest(v: &Value, path: &mut Vec<PathStep>, best: &mut Option<(usize, Vec<PathStep>)>) {
    match v {
        Value::Array(a) => {
            let size = json_size(v);
            if !a.is_empty() && best.as_ref().is_none_or(|(s, _)| size > *s) {
                *best = Some((size, path.clone()));
            }
            for (i, x) in a.iter().enumerate() {
                path.push(PathStep::Index(i));
                find_largest(x, path, best);
                path.pop();
            }
        }
        Value::Object(m) => {
            for (k, x) in m {
                path.push(PathStep::Key(k.clone()));
                find_largest(x, path, best);
                path.pop();
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn normalise_masks_what_varies() {
        assert_eq!(
            normalise_detail(
                "user 4711 not found (trace 3f2b8c1e-9a4d-4e5f-8b6a-1c2d3e4f5a6b) at 2026-11-28T10:00:01.123Z"
            ),
            "user <n> not found (trace <uuid>) at <time>"
        );
        assert_eq!(
            normalise_detail("timeout after 30.5 s on exec-1234, hash deadbeef0123456789abcdef"),
            "timeout after <n> s on <id>, hash <id>"
        );
        assert_eq!(normalise_detail("  a \n\t b  "), "a b");
        assert_eq!(
            normalise_detail("on 2026-11-28 at 0xff"),
            "on <date> at <hex>"
        );
        // Words stay words.
        assert_eq!(
            normalise_detail("Missing field: customerName"),
            "Missing field: customerName"
        );
    }

    #[test]
    fn normalise_groups_occurrences_and_is_bounded() {
        let a = normalise_detail("row 12 of batch 2026-01-01T00:00:00Z failed");
        let b = normalise_detail("row 9000 of batch 2026-02-03T04:05:06+01:00 failed");
        assert_eq!(a, b);
        assert_eq!(normalise_detail(&"x".repeat(10_000)).chars().count(), 300);
    }

    #[test]
    fn shape_lists_nested_keys_with_types_and_sizes() {
        let s = payload_shape(&json!({"a": 1, "b": {"c": "xy", "d/e": [1, 2]}, "f": 1.5}));
        let keys: Vec<_> = s.keys().cloned().collect();
        assert_eq!(keys, ["/a", "/b", "/b/c", "/b/d~1e", "/f"]);
        assert_eq!(s["/a"].ty, "integer");
        assert_eq!(s["/f"].ty, "number");
        assert_eq!(
            s["/b/c"],
            Field {
                ty: "string",
                bytes: 4
            }
        );
        assert_eq!(s["/b/d~1e"].ty, "array");
        assert!(payload_shape(&json!([1, 2])).is_empty());
        assert!(payload_shape(&Value::Null).is_empty());
    }

    #[test]
    fn shape_depth_and_width_are_bounded() {
        let deep = json!({"a": {"b": {"c": {"d": {"e": {"f": 1}}}}}});
        assert_eq!(payload_shape(&deep).len(), MAX_SHAPE_DEPTH);
        let wide: serde_json::Map<String, Value> =
            (0..1000).map(|i| (format!("k{i}"), json!(i))).collect();
        assert_eq!(payload_shape(&Value::Object(wide)).len(), MAX_SHAPE_KEYS);
    }

    #[test]
    fn comparison_names_missing_keys_types_and_sizes() {
        let ok = json!({"customer": {"name": "A", "tier": "gold"}, "items": [1], "note": "n"});
        let bad =
            json!({"customer": "A", "items": [1], "comment": "x".repeat(500), "extra": {"x": 1}});
        let c = compare_payloads(Some(&bad), Some(&ok));
        assert_eq!(c.only_in_failed, ["/comment", "/extra"]);
        assert_eq!(
            c.only_in_succeeded,
            ["/customer/name", "/customer/tier", "/note"]
        );
        assert_eq!(
            c.type_changes,
            [TypeChange {
                path: "/customer".into(),
                failed: "string",
                succeeded: "object"
            }]
        );
        assert!(c.size_changes.is_empty());
        assert!(!c.same_shape());
        assert!(c.failed_bytes > c.succeeded_bytes);

        let small = json!({"text": "short"});
        let big = json!({"text": "y".repeat(300)});
        let c = compare_payloads(Some(&big), Some(&small));
        assert_eq!(
            c.size_changes,
            [SizeChange {
                path: "/text".into(),
                failed_bytes: 302,
                succeeded_bytes: 7
            }]
        );
        assert!(compare_payloads(Some(&ok), Some(&ok)).same_shape());
        let c = compare_payloads(None, Some(&small));
        assert_eq!(c.only_in_succeeded, ["/text"]);
        assert_eq!(c.failed_bytes, 4);
    }

    #[test]
    fn percentiles_nearest_rank() {
        assert_eq!(percentile(&[], 0.5), None);
        let v: Vec<i64> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.5), Some(50));
        assert_eq!(percentile(&v, 0.9), Some(90));
        assert_eq!(percentile(&v, 0.0), Some(1));
        assert_eq!(percentile(&v, 1.0), Some(100));
        assert_eq!(
            Percentiles::of(vec![5, 1, 3]),
            Some(Percentiles {
                p50: 3,
                p90: 5,
                p99: 5,
                max: 5
            })
        );
    }

    #[test]
    fn summary_of_successful_payloads() {
        let mut s = ShapeSummary::default();
        s.add(Some(&json!({"a": 1, "b": "x"})));
        s.add(Some(&json!({"a": 2})));
        s.add(Some(&json!({"a": "3"})));
        s.add(None);
        assert_eq!(s.samples(), 4);
        let keys = s.keys();
        assert_eq!(keys[0].path, "/a");
        assert_eq!(keys[0].presence, 0.75);
        assert_eq!(keys[0].types.get("integer"), Some(&2));
        assert_eq!(keys[0].types.get("string"), Some(&1));
        assert_eq!(keys[1].path, "/b");
        assert_eq!(keys[1].presence, 0.25);
        assert!(s.required().is_empty());
        let mut t = ShapeSummary::default();
        t.add(Some(&json!({"a": 1, "b": 2})));
        t.add(Some(&json!({"a": 1})));
        assert_eq!(t.required().into_iter().collect::<Vec<_>>(), ["/a"]);
        assert_eq!(t.sizes().map(|p| p.max), Some(13));
    }

    #[test]
    fn fit_previews_payloads_then_cuts_lists() {
        let small = json!({"a": [1, 2, 3]});
        assert_eq!(
            fit(small.clone(), 1000),
            json!({"a": [1, 2, 3], "truncated": false})
        );
        let big = json!({
            "chain": [{"requestPayload": "x".repeat(5000)}, {"requestPayload": "y".repeat(5000)}],
            "examples": (0..500).map(|i| format!("trace-{i}")).collect::<Vec<_>>(),
        });
        for budget in [12_000, 3000, 800, 200] {
            let v = fit(big.clone(), budget);
            assert!(json_size(&v) <= budget, "{budget}: {}", json_size(&v));
            assert_eq!(v["truncated"], json!(true));
            // Order is kept: what survives is the head of each list.
            if let Some(first) = v["examples"].get(0) {
                assert_eq!(first, "trace-0");
            }
        }
        assert_eq!(fit(big, 1_000_000)["truncated"], json!(false));
    }

    #[test]
    fn trend_compares_halves() {
        assert_eq!(trend(0, 0), Trend::Steady);
        assert_eq!(trend(0, 3), Trend::New);
        assert_eq!(trend(2, 3), Trend::Rising);
        assert_eq!(trend(3, 2), Trend::Falling);
        assert_eq!(trend(3, 0), Trend::Falling);
        assert_eq!(trend(10, 11), Trend::Steady);
    }
}
