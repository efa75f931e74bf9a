//! Recording: where every attempt's row goes. `store` writes to PostgreSQL, `spool` keeps what
//! PostgreSQL could not take in a durable journal and replays it.

pub mod spool;
pub mod store;
