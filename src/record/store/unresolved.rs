//! The one way a row is resolved without an outcome: `failed`, with [`OUTCOME_UNKNOWN`] and a
//! detail saying why. Retention (rows that aged out unresolved) and crash recovery (rows of a
//! dead instance) build their statements from [`resolve_set`].

/// `error_code` of a row whose outcome was never recorded.
pub const OUTCOME_UNKNOWN: &str = "OUTCOME_UNKNOWN";

/// The `SET` list that resolves a row: `detail` is an SQL expression for `error_detail`; with
/// `stamp`, `responded_at` becomes now.
pub(super) fn resolve_set(detail: &str, stamp: bool) -> String {
    let responded_at = match stamp {
        true => ",\n    responded_at = now() AT TIME ZONE 'UTC'",
        false => "",
    };
    format!(
        "overall_status = 'failed',\n    error_code = '{OUTCOME_UNKNOWN}',\n    \
         error_detail = {detail}{responded_at}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_set_list_resolves_as_failed_with_outcome_unknown() {
        let set = resolve_set("'why'", true);
        assert!(set.starts_with("overall_status = 'failed'"), "{set}");
        assert!(set.contains("error_code = 'OUTCOME_UNKNOWN'"), "{set}");
        assert!(set.contains("error_detail = 'why'"), "{set}");
        assert!(
            set.ends_with("responded_at = now() AT TIME ZONE 'UTC'"),
            "{set}"
        );
        assert!(!resolve_set("'why'", false).contains("responded_at"));
    }
}
