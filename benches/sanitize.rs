//! Placeholder until the sanitize benchmark lands.
fn main() {}
