//! Truncation that keeps structure: every key stays (while they fit), long strings keep their
//! beginning plus `…`, long arrays their first items, until the serialized value fits the cap.
//! Runs only after redaction, so no secret can straddle a cut. Measuring stops as soon as the
//! budget is exceeded, so each trial costs O(cap), whatever the size of the value.

use serde_json::{Map, Value};

/// Marks a shortened string.
pub const ELLIPSIS: &str = "\u{2026}";

/// What a truncation removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Cuts {
    pub strings_shortened: u64,
    pub items_dropped: u64,
    pub keys_dropped: u64,
}

#[derive(Debug, Clone, Copy)]
struct Limits {
    chars: usize,
    items: usize,
    keys: usize,
}

impl Limits {
    const NONE: Limits = Limits {
        chars: usize::MAX,
        items: usize::MAX,
        keys: usize::MAX,
    };

    /// One knob for strings and arrays together: `t` characters, `t / 8` items (at least one).
    fn balanced(t: usize) -> Limits {
        Limits {
            chars: t,
            items: t.div_ceil(8).max(1),
            keys: usize::MAX,
        }
    }
}

/// JSON-escaped size of one character, as serde_json writes it.
pub(super) fn escaped_len(c: char) -> usize {
    match c {
        '"' | '\\' | '\n' | '\r' | '\t' | '\u{08}' | '\u{0C}' => 2,
        c if (c as u32) < 0x20 => 6,
        c => c.len_utf8(),
    }
}

/// The serialized size of `v` under the limits, or `None` once it exceeds `budget`.
fn measure(v: &Value, lim: Limits, budget: usize) -> Option<usize> {
    let mut used = 0;
    add(v, lim, budget, &mut used).then_some(used)
}

fn bump(used: &mut usize, n: usize, budget: usize) -> bool {
    *used = used.saturating_add(n);
    *used <= budget
}

fn add(v: &Value, lim: Limits, budget: usize, used: &mut usize) -> bool {
    match v {
        Value::Null => bump(used, 4, budget),
        Value::Bool(b) => bump(used, if *b { 4 } else { 5 }, budget),
        Value::Number(n) => bump(used, number_len(n), budget),
        Value::String(s) => add_str(s, lim.chars, budget, used),
        Value::Array(items) => {
            if !bump(used, 2, budget) {
                return false;
            }
            for (i, item) in items.iter().take(lim.items).enumerate() {
                if (i > 0 && !bump(used, 1, budget)) || !add(item, lim, budget, used) {
                    return false;
                }
            }
            true
        }
        Value::Object(map) => {
            if !bump(used, 2, budget) {
                return false;
            }
            for (i, (k, val)) in map.iter().take(lim.keys).enumerate() {
                if (i > 0 && !bump(used, 1, budget))
                    || !add_str(k, usize::MAX, budget, used)
                    || !bump(used, 1, budget)
                    || !add(val, lim, budget, used)
                {
                    return false;
                }
            }
            true
        }
    }
}

fn add_str(s: &str, max_chars: usize, budget: usize, used: &mut usize) -> bool {
    if !bump(used, 2, budget) {
        return false;
    }
    for (i, c) in s.chars().enumerate() {
        if i == max_chars {
            return bump(used, ELLIPSIS.len(), budget);
        }
        if !bump(used, escaped_len(c), budget) {
            return false;
        }
    }
    true
}

fn number_len(n: &serde_json::Number) -> usize {
    struct Count(usize);
    impl std::fmt::Write for Count {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            self.0 += s.len();
            Ok(())
        }
    }
    let mut c = Count(0);
    let _ = std::fmt::write(&mut c, format_args!("{n}"));
    c.0
}

/// True when `v` serializes within `cap` bytes.
pub(super) fn fits(v: &Value, cap: usize) -> bool {
    measure(v, Limits::NONE, cap).is_some()
}

/// `v` shortened to serialize within `cap` bytes, keeping as much structure as fits; `None`
/// when even its skeleton does not fit (then the caller stores a text preview).
pub(super) fn fit(v: &Value, cap: usize) -> Option<(Value, Cuts)> {
    if fits(v, cap) {
        return Some((v.clone(), Cuts::default()));
    }
    let (longest, widest, most_keys) = extent(v);
    let top = longest.max(widest.saturating_mul(8)).max(1);
    let lim = if measure(v, Limits::balanced(0), cap).is_some() {
        // Largest t that fits: measure(t) grows with t.
        let (mut lo, mut hi) = (0usize, top);
        while lo < hi {
            let mid = lo + (hi - lo).div_ceil(2);
            if measure(v, Limits::balanced(mid), cap).is_some() {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        Limits::balanced(lo)
    } else {
        // Too many keys even with every string and array minimal: keep the first keys.
        let base = Limits::balanced(0);
        let with_keys = |k| Limits { keys: k, ..base };
        measure(v, with_keys(0), cap)?;
        let (mut lo, mut hi) = (0usize, most_keys);
        while lo < hi {
            let mid = lo + (hi - lo).div_ceil(2);
            if measure(v, with_keys(mid), cap).is_some() {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        with_keys(lo)
    };
    let mut cuts = Cuts::default();
    let out = apply(v, lim, &mut cuts);
    // The measurement is exact; this guards the invariant against any future drift.
    let len = serde_json::to_vec(&out)
        .map(|b| b.len())
        .unwrap_or(usize::MAX);
    (len <= cap).then_some((out, cuts))
}

/// (longest string in chars, longest array, most keys in one object).
fn extent(v: &Value) -> (usize, usize, usize) {
    let mut e = (0, 0, 0);
    let mut stack = vec![v];
    while let Some(v) = stack.pop() {
        match v {
            Value::String(s) => e.0 = e.0.max(s.chars().count()),
            Value::Array(items) => {
                e.1 = e.1.max(items.len());
                stack.extend(items.iter());
            }
            Value::Object(map) => {
                e.2 = e.2.max(map.len());
                for (k, val) in map {
                    e.0 = e.0.max(k.chars().count());
                    stack.push(val);
                }
            }
            _ => {}
        }
    }
    e
}

fn apply(v: &Value, lim: Limits, cuts: &mut Cuts) -> Value {
    match v {
        Value::String(s) => match s.char_indices().nth(lim.chars) {
            Some((at, _)) => {
                cuts.strings_shortened += 1;
                Value::String(format!("{}{ELLIPSIS}", &s[..at]))
            }
            None => v.clone(),
        },
        Value::Array(items) => {
            let kept = items.len().min(lim.items);
            cuts.items_dropped += (items.len() - kept) as u64;
            Value::Array(items[..kept].iter().map(|i| apply(i, lim, cuts)).collect())
        }
        Value::Object(map) => {
            let kept = map.len().min(lim.keys);
            cuts.keys_dropped += (map.len() - kept) as u64;
            let mut out = Map::new();
            for (k, val) in map.iter().take(kept) {
                out.insert(k.clone(), apply(val, lim, cuts));
            }
            Value::Object(out)
        }
        _ => v.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn len(v: &Value) -> usize {
        serde_json::to_vec(v).expect("serializes").len()
    }

    #[test]
    fn measurement_is_exact() {
        let v = json!({"a": "x\u{1}\"\\\n é…", "b": [1, -2.5, 1e300, true, false, null], "c": {}});
        assert_eq!(measure(&v, Limits::NONE, usize::MAX), Some(len(&v)));
    }

    #[test]
    fn small_values_are_untouched() {
        let v = json!({"a": 1});
        assert_eq!(fit(&v, 100), Some((v, Cuts::default())));
    }

    #[test]
    fn long_strings_and_arrays_are_shortened_keys_kept() {
        let v = json!({
            "executionId": "123",
            "html": "x".repeat(10_000),
            "items": (0..1000).map(|i| json!({"id": i, "name": format!("item {i}")})).collect::<Vec<_>>(),
        });
        let (out, cuts) = fit(&v, 2048).expect("fits");
        assert!(len(&out) <= 2048, "{}", len(&out));
        assert_eq!(out["executionId"], "123");
        assert!(out["html"].as_str().expect("string").ends_with(ELLIPSIS));
        assert!(!out["items"].as_array().expect("array").is_empty());
        assert_eq!(out["items"][0]["id"], 0);
        assert!(cuts.strings_shortened >= 1 && cuts.items_dropped > 0);
        assert_eq!(cuts.keys_dropped, 0);
    }

    #[test]
    fn too_many_keys_keeps_the_first_ones() {
        let map: Map<String, Value> = (0..5000).map(|i| (format!("k{i:05}"), json!(i))).collect();
        let (out, cuts) = fit(&Value::Object(map), 1000).expect("fits");
        assert!(len(&out) <= 1000);
        assert!(cuts.keys_dropped > 0);
        assert_eq!(out["k00000"], 0);
    }

    #[test]
    fn a_key_larger_than_the_cap_is_dropped() {
        let v = json!({ "k".repeat(5000): 1 });
        let (out, cuts) = fit(&v, 1000).expect("fits");
        assert_eq!((out, cuts.keys_dropped), (json!({}), 1));
        assert_eq!(fit(&v, 1), None);
    }
}
