//! How rows become JSON for agents: payload modes, field selection and the per-response byte
//! budget. Shared by the HTTP endpoints and `trace-proxy traces … --json`, so both print the
//! same objects.

use serde_json::{Map, Value};

use crate::diff::AttemptDiff;
use crate::trace::TraceRow;

/// The `CommunicationTrace` field names (DATA-002), in schema order, then trace-proxy's own
/// columns ([`SPEC_FIELDS`] onwards); `fields=` picks from these, `fields=*` takes them all.
pub const FIELDS: [&str; 22] = [
    "id",
    "traceId",
    "executionId",
    "attemptNumber",
    "sourceService",
    "destinationService",
    "workflowId",
    "action",
    "userId",
    "requestedAt",
    "respondedAt",
    "durationMs",
    "requestPayload",
    "responsePayload",
    "overallStatus",
    "errorCode",
    "errorDetail",
    "n8nExecutionId",
    "httpMethod",
    "httpTarget",
    "httpStatus",
    "n8nExecution",
];

/// How many of [`FIELDS`] are DATA-002's: the fields a row has unless `fields=` asks for more.
pub const SPEC_FIELDS: usize = 18;

/// `n8nExecution`: shown by default too, when the row has it.
const N8N_EXECUTION: usize = 21;

/// Serialized size above which `payloads=truncated` replaces a payload (or a diff value) by a
/// preview.
pub const PREVIEW_BYTES: usize = 2048;

/// Room kept for the envelope around `items` when filling the byte budget.
const ENVELOPE_RESERVE: usize = 2048;

/// `payloads=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PayloadMode {
    /// Payload fields are left out (and not read from the database).
    None,
    /// Payloads up to [`PREVIEW_BYTES`] as stored, larger ones as a preview with `_truncated`.
    #[default]
    Truncated,
    /// As stored (the stored payload is already capped by `capture.max_payload_bytes`).
    Full,
}

impl PayloadMode {
    pub fn parse(s: &str) -> Option<PayloadMode> {
        match s {
            "none" => Some(PayloadMode::None),
            "truncated" => Some(PayloadMode::Truncated),
            "full" => Some(PayloadMode::Full),
            _ => None,
        }
    }
}

/// What of each row is shown.
#[derive(Debug, Clone, Default)]
pub struct Projection {
    pub payloads: PayloadMode,
    /// `None`: every DATA-002 field. Otherwise indexes into [`FIELDS`], ascending.
    pub fields: Option<Vec<usize>>,
}

impl Projection {
    /// Parses `fields=` (comma-separated names from [`FIELDS`], or `*` for all of them).
    pub fn parse_fields(s: &str) -> Result<Vec<usize>, String> {
        if s.trim() == "*" {
            return Ok((0..FIELDS.len()).collect());
        }
        let mut picked = Vec::new();
        for name in s.split(',').map(str::trim) {
            match FIELDS.iter().position(|f| *f == name) {
                Some(i) => picked.push(i),
                None => {
                    return Err(format!(
                        "`fields`: unknown field {name:?}; known fields: {} (or * for all)",
                        FIELDS.join(",")
                    ))
                }
            }
        }
        picked.sort_unstable();
        picked.dedup();
        Ok(picked)
    }

    fn shows(&self, field: usize) -> bool {
        match &self.fields {
            None => field < SPEC_FIELDS || field == N8N_EXECUTION,
            Some(f) => f.contains(&field),
        }
    }

    /// Whether the query needs the payload columns at all.
    pub fn reads_payloads(&self) -> bool {
        self.payloads != PayloadMode::None && (self.shows(12) || self.shows(13))
    }

    /// One row as a JSON object.
    pub fn row(&self, row: &TraceRow) -> Value {
        let mut full = match serde_json::to_value(row) {
            Ok(Value::Object(m)) => m,
            _ => Map::new(),
        };
        let mut out = Map::new();
        for (i, name) in FIELDS.iter().enumerate() {
            if !self.shows(i) {
                continue;
            }
            let is_payload = i == 12 || i == 13;
            if is_payload && self.payloads == PayloadMode::None {
                continue;
            }
            let mut v = full.remove(*name).unwrap_or(Value::Null);
            // n8n's account is listed by default only where there is one.
            if i == N8N_EXECUTION && v.is_null() && self.fields.is_none() {
                continue;
            }
            if is_payload && self.payloads == PayloadMode::Truncated {
                v = preview(v, PREVIEW_BYTES);
            }
            out.insert((*name).to_owned(), v);
        }
        Value::Object(out)
    }

    /// One attempt diff as JSON; changed payload values follow the payload mode (`none`: only
    /// the op and the JSON-pointer path).
    pub fn diff(&self, d: &AttemptDiff) -> Value {
        let mut v = serde_json::to_value(d).unwrap_or(Value::Null);
        if let Some(Value::Array(changes)) = v.get_mut("request") {
            for change in changes.iter_mut() {
                let Value::Object(m) = change else { continue };
                for key in ["value", "old", "new"] {
                    match self.payloads {
                        PayloadMode::None => {
                            m.remove(key);
                        }
                        PayloadMode::Truncated => {
                            if let Some(x) = m.remove(key) {
                                m.insert(key.to_owned(), preview(x, PREVIEW_BYTES));
                            }
                        }
                        PayloadMode::Full => {}
                    }
                }
            }
        }
        v
    }
}

/// `v` itself when its JSON text is at most `limit` bytes, else the same truncation indicator
/// the proxy stores for oversized bodies, with a preview of the JSON text.
pub fn preview(v: Value, limit: usize) -> Value {
    let text = v.to_string();
    if text.len() <= limit {
        return v;
    }
    let mut cut = limit;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    serde_json::json!({
        "_truncated": {"original_bytes": text.len(), "limit_bytes": limit, "by": "query"},
        "preview": &text[..cut],
    })
}

/// Items that fit the byte budget.
pub struct Budgeted {
    pub items: Vec<Value>,
    /// Something was left out (items, or the payloads of the only item) to stay in budget.
    pub cut: bool,
}

/// Takes items in order while their serialized size fits `budget` (less room for the
/// envelope). A first item too large on its own is kept with its payload-like fields replaced
/// by an indicator, so a response is never empty just because one row is huge.
pub fn fill(items: Vec<Value>, budget: usize) -> Budgeted {
    let room = budget.saturating_sub(ENVELOPE_RESERVE);
    let mut used = 0usize;
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let size = serde_json::to_vec(&item).map_or(usize::MAX, |b| b.len() + 1);
        if used.saturating_add(size) > room {
            if out.is_empty() {
                out.push(shrink(item, room));
            }
            return Budgeted {
                items: out,
                cut: true,
            };
        }
        used += size;
        out.push(item);
    }
    Budgeted {
        items: out,
        cut: false,
    }
}

/// Replaces the large values of an object (payloads, diff values) by size indicators.
fn shrink(item: Value, room: usize) -> Value {
    let Value::Object(m) = item else {
        return item;
    };
    let per_field = (room / 8).max(64);
    let out = m
        .into_iter()
        .map(|(k, v)| {
            let size = v.to_string().len();
            if size > per_field {
                let omitted = serde_json::json!({"_omitted": {"original_bytes": size, "reason": "admin.max_response_bytes"}});
                (k, omitted)
            } else {
                (k, v)
            }
        })
        .collect();
    Value::Object(out)
}

/// The note shown beside `truncated: true`.
pub fn budget_note(budget: usize) -> String {
    format!(
        "response cut to stay within admin.max_response_bytes ({budget} bytes); ask for payloads=none, fewer fields, a smaller limit, or continue with nextCursor"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn row() -> TraceRow {
        TraceRow {
            id: uuid::Uuid::nil(),
            trace_id: "t".into(),
            execution_id: None,
            attempt_number: 1,
            source_service: "bilko-app".into(),
            destination_service: "n8n".into(),
            workflow_id: "w".into(),
            action: None,
            user_id: "u".into(),
            requested_at: chrono::NaiveDateTime::default(),
            responded_at: None,
            duration_ms: Some(3),
            request_payload: Some(json!({"big": "x".repeat(5000)})),
            response_payload: Some(json!({"ok": true})),
            overall_status: "success".into(),
            error_code: None,
            error_detail: None,
            n8n_execution_id: None,
            http_method: None,
            http_target: None,
            http_status: None,
            n8n_execution: None,
        }
    }

    #[test]
    fn payload_modes_and_fields() {
        let full = Projection::default().row(&row());
        assert_eq!(full.as_object().map(|m| m.len()), Some(18));
        assert_eq!(full["responsePayload"], json!({"ok": true}));
        assert_eq!(full["requestPayload"]["_truncated"]["limit_bytes"], 2048);
        assert_eq!(full["requestedAt"], "1970-01-01T00:00:00.000Z");
        let none = Projection {
            payloads: PayloadMode::None,
            fields: None,
        };
        assert!(none.row(&row()).get("requestPayload").is_none());
        assert!(!none.reads_payloads());
        let picked = Projection {
            payloads: PayloadMode::Full,
            fields: Some(Projection::parse_fields("overallStatus,id").expect("fields")),
        };
        assert_eq!(
            picked.row(&row()),
            json!({"id": uuid::Uuid::nil(), "overallStatus": "success"})
        );
        assert!(!picked.reads_payloads());
        assert!(Projection::parse_fields("id,bogus").is_err());
        let all = Projection {
            payloads: PayloadMode::Full,
            fields: Some(Projection::parse_fields("*").expect("fields")),
        };
        let mut r = row();
        r.http_status = Some(502);
        let v = all.row(&r);
        assert_eq!(v.as_object().map(|m| m.len()), Some(22));
        assert_eq!(v["httpStatus"], 502);
        assert!(
            full.get("httpStatus").is_none(),
            "DATA-002 fields only by default"
        );
        // n8n's account of the execution: by default only where there is one.
        assert!(full.get("n8nExecution").is_none());
        r.n8n_execution = Some(json!({"status": "error"}));
        let shown = Projection::default().row(&r);
        assert_eq!(shown["n8nExecution"], json!({"status": "error"}));
    }

    #[test]
    fn budget_cuts_and_flags() {
        let items: Vec<Value> = (0..100)
            .map(|i| json!({"n": i, "pad": "y".repeat(100)}))
            .collect();
        let b = fill(items.clone(), 4096);
        assert!(b.cut);
        assert!(!b.items.is_empty() && b.items.len() < 100);
        assert!(serde_json::to_vec(&b.items).expect("json").len() <= 4096);
        let b = fill(items, 1 << 20);
        assert!(!b.cut);
        assert_eq!(b.items.len(), 100);
        let huge = vec![json!({"id": 1, "requestPayload": "z".repeat(10_000)})];
        let b = fill(huge, 4096);
        assert!(b.cut);
        assert_eq!(b.items[0]["id"], 1);
        assert_eq!(
            b.items[0]["requestPayload"]["_omitted"]["original_bytes"],
            10_002
        );
    }
}
