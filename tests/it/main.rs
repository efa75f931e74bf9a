//! Integration tests: the real proxy, real PostgreSQL (a schema per test), real upstreams.

mod api;
mod attempts;
mod failures;
mod protocol;
mod recording;
mod retention;
mod sanitize;
mod support;
