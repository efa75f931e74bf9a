//! Failures: upstream down/slow/reset, client abort, store unavailable, limits.
