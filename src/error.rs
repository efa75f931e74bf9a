//! How errors become text: one line with the error and each of its sources, for log lines and
//! the `error_detail` of a row. Typed errors keep their sources until they reach this boundary.

/// An error and its sources on one line, each cause once (a cause whose text an outer message
/// already contains is not repeated).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(cause) = src {
        let c = cause.to_string();
        if !s.contains(&c) {
            s.push_str(": ");
            s.push_str(&c);
        }
        src = cause.source();
    }
    s
}

/// Displays an error with its sources ([`error_chain`]), for `tracing` fields: `error = %Chain(&e)`.
pub struct Chain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&error_chain(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("outer: disk full")]
    struct Repeats(#[source] std::io::Error);

    #[test]
    fn every_cause_once_on_one_line() {
        let io = || std::io::Error::other("disk full");
        assert_eq!(error_chain(&Outer(io())), "outer: disk full");
        assert_eq!(error_chain(&Repeats(io())), "outer: disk full");
    }

    #[test]
    fn a_journal_error_is_not_called_a_database_error_and_keeps_its_cause() {
        use crate::record::replay::ReplayError;
        let e = ReplayError::OpenSegment {
            path: "/spool/00000001.seg".into(),
            source: std::io::Error::other("permission denied"),
        };
        assert_eq!(
            error_chain(&e),
            "cannot open journal segment /spool/00000001.seg: permission denied"
        );
    }
}
