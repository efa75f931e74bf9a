//! Integration tests: the real proxy, real PostgreSQL (a schema per test), real upstreams.

mod agent;
mod api;
mod attempts;
mod cli;
mod cluster;
mod container;
mod failures;
mod health;
mod outage;
mod process;
mod protocol;
mod recording;
mod recovery;
mod retention;
mod sanitize;
mod support;
mod ui;
