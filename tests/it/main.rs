//! Integration tests: the real proxy, real PostgreSQL (a schema per test), real upstreams.

mod attempts;
mod failures;
mod protocol;
mod recording;
mod support;
