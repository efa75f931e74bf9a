//! Forward-only migrations from `sql/`, recorded in `trace_proxy_migrations`. One transaction
//! under an advisory lock, so two proxies starting at once apply each migration exactly once.

use std::sync::Arc;

use tokio_postgres::Client;

use super::StoreError;

/// (version, name, SQL), in order. Never edit a shipped migration; add a new one.
pub const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "communication_traces",
        include_str!("../../../sql/0001_communication_traces.sql"),
    ),
    (
        2,
        "http_columns",
        include_str!("../../../sql/0002_http_columns.sql"),
    ),
    (
        3,
        "attempt_unique",
        include_str!("../../../sql/0003_attempt_unique.sql"),
    ),
    (
        4,
        "retention_archive",
        include_str!("../../../sql/0004_retention_archive.sql"),
    ),
    (
        5,
        "redactions",
        include_str!("../../../sql/0005_redactions.sql"),
    ),
    (
        6,
        "query_indexes",
        include_str!("../../../sql/0006_query_indexes.sql"),
    ),
    (
        7,
        "instances",
        include_str!("../../../sql/0007_instances.sql"),
    ),
    (
        8,
        "workflow_time_index",
        include_str!("../../../sql/0008_workflow_time_index.sql"),
    ),
    (
        9,
        "failures_by_time",
        include_str!("../../../sql/0009_failures_by_time.sql"),
    ),
    (
        10,
        "n8n_execution",
        include_str!("../../../sql/0010_n8n_execution.sql"),
    ),
    (
        11,
        "database_identity",
        include_str!("../../../sql/0011_database_identity.sql"),
    ),
    (
        12,
        "fewer_indexes",
        include_str!("../../../sql/0012_fewer_indexes.sql"),
    ),
];

/// Arbitrary constant identifying the migration lock among advisory locks.
const LOCK_KEY: i64 = 0x7472_6163_6570_7278;

/// Applies pending migrations; returns the versions applied now.
pub async fn migrate(client: &mut Client) -> Result<Vec<i32>, StoreError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS trace_proxy_migrations (
             version    integer PRIMARY KEY,
             name       text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now()
         )",
    )
    .await?;
    let done: Vec<i32> = tx
        .query("SELECT version FROM trace_proxy_migrations", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut applied = Vec::new();
    for (version, name, sql) in MIGRATIONS {
        if done.contains(version) {
            continue;
        }
        tx.batch_execute(sql)
            .await
            .map_err(|e| StoreError::Migration {
                version: *version,
                name,
                source: Arc::new(e),
            })?;
        tx.execute(
            "INSERT INTO trace_proxy_migrations (version, name) VALUES ($1, $2)",
            &[version, name],
        )
        .await?;
        applied.push(*version);
    }
    tx.commit().await?;
    Ok(applied)
}
