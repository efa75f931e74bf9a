//! What changed between consecutive attempts of a trace (D3: "analyse what changed between
//! attempts"). Pure: rows in, differences out. Only what differs is reported; payload paths are
//! JSON pointers (RFC 6901) into the stored — already sanitized — request payloads.

use serde::Serialize;
use serde_json::{Map, Value};

use crate::trace::TraceRow;

/// The differences between attempt `from` and attempt `to`.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AttemptDiff {
    pub from_attempt: i32,
    pub to_attempt: i32,
    /// Request payload fields that appeared, disappeared or changed.
    pub request: Vec<FieldChange>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overall_status: Option<Change<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<Change<Option<String>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<Change<Option<i32>>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
/// Present only when the value changed.
pub struct Change<T> {
    pub old: T,
    pub new: T,
}

#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum FieldChange {
    Added {
        path: String,
        value: Value,
    },
    Removed {
        path: String,
        old: Value,
    },
    Changed {
        path: String,
        old: Value,
        new: Value,
    },
}

impl AttemptDiff {
    /// True when nothing differs.
    pub fn is_empty(&self) -> bool {
        self.request.is_empty()
            && self.overall_status.is_none()
            && self.error_code.is_none()
            && self.duration_ms.is_none()
    }
}

fn change<T: PartialEq + Clone>(old: &T, new: &T) -> Option<Change<T>> {
    (old != new).then(|| Change {
        old: old.clone(),
        new: new.clone(),
    })
}

/// The differences between two attempts.
pub fn diff_attempts(prev: &TraceRow, next: &TraceRow) -> AttemptDiff {
    let mut request = Vec::new();
    diff_values(
        "",
        prev.request_payload.as_ref().unwrap_or(&Value::Null),
        next.request_payload.as_ref().unwrap_or(&Value::Null),
        &mut request,
    );
    AttemptDiff {
        from_attempt: prev.attempt_number,
        to_attempt: next.attempt_number,
        request,
        overall_status: change(&prev.overall_status, &next.overall_status),
        error_code: change(&prev.error_code, &next.error_code),
        duration_ms: change(&prev.duration_ms, &next.duration_ms),
    }
}

/// The differences between each pair of consecutive attempts of a chain (ordered by attempt).
pub fn diff_chain(chain: &[TraceRow]) -> Vec<AttemptDiff> {
    chain
        .windows(2)
        .map(|w| diff_attempts(&w[0], &w[1]))
        .collect()
}

/// RFC 6901: `~` → `~0`, `/` → `~1`.
fn pointer(base: &str, key: &str) -> String {
    format!("{base}/{}", key.replace('~', "~0").replace('/', "~1"))
}

fn diff_values(path: &str, old: &Value, new: &Value, out: &mut Vec<FieldChange>) {
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => diff_objects(path, a, b, out),
        (Value::Array(a), Value::Array(b)) => {
            for i in 0..a.len().max(b.len()) {
                let p = format!("{path}/{i}");
                match (a.get(i), b.get(i)) {
                    (Some(x), Some(y)) => diff_values(&p, x, y, out),
                    (Some(x), None) => out.push(FieldChange::Removed {
                        path: p,
                        old: x.clone(),
                    }),
                    (None, Some(y)) => out.push(FieldChange::Added {
                        path: p,
                        value: y.clone(),
                    }),
                    (None, None) => {}
                }
            }
        }
        (a, b) if a != b => out.push(FieldChange::Changed {
            path: path.to_owned(),
            old: a.clone(),
            new: b.clone(),
        }),
        _ => {}
    }
}

fn diff_objects(
    path: &str,
    a: &Map<String, Value>,
    b: &Map<String, Value>,
    out: &mut Vec<FieldChange>,
) {
    for (k, x) in a {
        match b.get(k) {
            Some(y) => diff_values(&pointer(path, k), x, y, out),
            None => out.push(FieldChange::Removed {
                path: pointer(path, k),
                old: x.clone(),
            }),
        }
    }
    for (k, y) in b {
        if !a.contains_key(k) {
            out.push(FieldChange::Added {
                path: pointer(path, k),
                value: y.clone(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn row(n: i32, payload: Value, status: &str, code: Option<&str>, ms: i32) -> TraceRow {
        TraceRow {
            id: uuid::Uuid::nil(),
            trace_id: "t".into(),
            execution_id: None,
            attempt_number: n,
            source_service: "bilko-app".into(),
            destination_service: "n8n".into(),
            workflow_id: "w".into(),
            action: None,
            user_id: "u".into(),
            requested_at: chrono::NaiveDateTime::default(),
            responded_at: None,
            duration_ms: Some(ms),
            request_payload: Some(payload),
            response_payload: None,
            overall_status: status.into(),
            error_code: code.map(str::to_owned),
            error_detail: None,
            n8n_execution_id: None,
            http_method: None,
            http_target: None,
            http_status: None,
            n8n_execution: None,
        }
    }

    #[test]
    fn names_exactly_what_changed() {
        let a = row(
            1,
            json!({"order": 5, "items": [1, 2], "a/b": {"x": 1}, "gone": true, "same": "s"}),
            "failed",
            Some("HTTP_503"),
            10,
        );
        let b = row(
            2,
            json!({"order": 6, "items": [1, 2, 3], "a/b": {"x": 1, "y": 2}, "same": "s"}),
            "success",
            None,
            10,
        );
        let d = diff_attempts(&a, &b);
        assert!(d.request.contains(&FieldChange::Changed {
            path: "/order".into(),
            old: json!(5),
            new: json!(6)
        }));
        assert!(d.request.contains(&FieldChange::Removed {
            path: "/gone".into(),
            old: json!(true)
        }));
        let mut paths: Vec<String> = d
            .request
            .iter()
            .map(|c| match c {
                FieldChange::Added { path, .. }
                | FieldChange::Removed { path, .. }
                | FieldChange::Changed { path, .. } => path.clone(),
            })
            .collect();
        paths.sort();
        assert_eq!(paths, ["/a~1b/y", "/gone", "/items/2", "/order"]);
        assert_eq!(
            d.overall_status,
            Some(Change {
                old: "failed".into(),
                new: "success".into()
            })
        );
        assert_eq!(
            d.error_code,
            Some(Change {
                old: Some("HTTP_503".into()),
                new: None
            })
        );
        assert_eq!(d.duration_ms, None, "unchanged fields are not reported");
    }

    #[test]
    fn identical_attempts_have_an_empty_diff() {
        let a = row(
            1,
            json!({"x": [1, {"y": null}]}),
            "failed",
            Some("TIMEOUT"),
            5,
        );
        let b = row(
            2,
            json!({"x": [1, {"y": null}]}),
            "failed",
            Some("TIMEOUT"),
            5,
        );
        assert!(diff_attempts(&a, &b).is_empty());
        assert_eq!(diff_chain(&[a.clone(), b, a]).len(), 2);
    }

    #[test]
    fn a_type_change_is_one_change_at_that_path() {
        let a = row(1, json!({"x": {"y": 1}}), "failed", None, 1);
        let b = row(2, json!({"x": "text"}), "failed", None, 1);
        assert_eq!(
            diff_attempts(&a, &b).request,
            vec![FieldChange::Changed {
                path: "/x".into(),
                old: json!({"y": 1}),
                new: json!("text")
            }]
        );
    }
}
