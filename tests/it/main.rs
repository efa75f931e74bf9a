//! Integration tests: the real proxy, real PostgreSQL (a schema per test), real upstreams.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::too_many_lines,
    clippy::cognitive_complexity,
    unreachable_pub,
    clippy::disallowed_methods,
    reason = "test and measurement code: a failed step should stop it loudly"
)]

mod agent;
mod api;
mod attempts;
mod cli;
mod cluster;
mod container;
mod failures;
mod guardian;
mod health;
mod mcp;
mod n8n;
mod outage;
mod process;
mod protocol;
mod recording;
mod recovery;
mod replicas;
mod retention;
mod sanitize;
mod support;
mod tunnel;
mod ui;
