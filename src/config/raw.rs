//! The configuration as written: one raw struct per section (each in its section's module, with
//! its defaults, the only place they are stated), read section by section and key by key so
//! that a value of the wrong type is reported without hiding any other problem.

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::problems::Problems;
use super::{
    admin, capture, correlation, database, log, n8n, recovery, retention, routes, sanitize, server,
    spool, upstream,
};

/// The whole file as written; printed by `check-config` (with secrets redacted).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct RawConfig {
    pub server: server::RawServer,
    pub database: database::RawDatabase,
    pub capture: capture::RawCapture,
    pub upstream: upstream::RawUpstream,
    pub correlation: correlation::RawCorrelation,
    pub log: log::RawLog,
    pub sanitize: sanitize::RawSanitize,
    pub retention: retention::RawRetention,
    pub recovery: recovery::RawRecovery,
    pub spool: spool::RawSpool,
    pub admin: admin::RawAdmin,
    pub n8n: n8n::RawN8n,
    pub routes: Vec<routes::RawRoute>,
}

impl RawConfig {
    /// Reads a merged document; what cannot be read keeps its default and is reported.
    pub(super) fn read(doc: toml::Table, p: &mut Problems) -> RawConfig {
        let mut raw = RawConfig::default();
        for (key, value) in doc {
            let k = key.as_str();
            match k {
                "server" => raw.server = section(k, value, p),
                "database" => raw.database = section(k, value, p),
                "capture" => raw.capture = section(k, value, p),
                "upstream" => raw.upstream = section(k, value, p),
                "correlation" => raw.correlation = section(k, value, p),
                "log" => raw.log = section(k, value, p),
                "sanitize" => raw.sanitize = section(k, value, p),
                "retention" => raw.retention = section(k, value, p),
                "recovery" => raw.recovery = section(k, value, p),
                "spool" => raw.spool = section(k, value, p),
                "admin" => raw.admin = section(k, value, p),
                "n8n" => raw.n8n = section(k, value, p),
                "routes" => raw.routes = routes::read(value, p),
                _ => p.push(format!("unknown key `{key}`")),
            }
        }
        raw
    }
}

/// Reads the table at `at` into `T`. Unknown keys are reported; so is every key whose value
/// does not fit, which then keeps its default and is marked unread (nothing is checked about a
/// stand-in).
pub(super) fn section<T: DeserializeOwned + Default>(
    at: &str,
    value: toml::Value,
    p: &mut Problems,
) -> T {
    let toml::Value::Table(mut table) = value else {
        p.unread(at, "must be a table");
        return T::default();
    };
    if try_read::<T>(table.clone()).is_err() {
        // Each key alone, so every bad one is named, not only the first.
        let keys: Vec<String> = table.keys().cloned().collect();
        for key in keys {
            let Some((k, v)) = table.remove_entry(&key) else {
                continue;
            };
            match try_read::<T>(toml::Table::from_iter([(k.clone(), v.clone())])) {
                Ok(_) => {
                    table.insert(k, v);
                }
                Err(e) => p.unread(&format!("{at}.{key}"), e.message()),
            }
        }
    }
    let mut unknown = Vec::new();
    let read = serde_ignored::deserialize(toml::Value::Table(table), |path| {
        unknown.push(path.to_string())
    });
    for key in unknown {
        p.push(format!("unknown key `{at}.{key}`"));
    }
    read.unwrap_or_else(|e| {
        p.unread(at, e.message());
        T::default()
    })
}

fn try_read<T: DeserializeOwned>(table: toml::Table) -> Result<T, toml::de::Error> {
    toml::Value::Table(table).try_into()
}
