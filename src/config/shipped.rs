//! The shipped `proxy.toml` and the README's configuration tables state the built-in defaults:
//! checked here against the raw sections' `Default`s, so neither can drift from the code.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use super::deprecated::RENAMED;
use super::duration::Dur;
use super::problems::Problems;
use super::raw::RawConfig;
use super::routes::{RawRetry, RawRoute, RawTimeouts};
use super::sanitize::RawRouteSanitize;

fn shipped(file: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn table<T: serde::Serialize>(value: &T) -> toml::Table {
    toml::Table::try_from(value).expect("raw sections serialize")
}

/// Every section with every key at its default; `routes` (which has no default) as the keys
/// one fully written entry has.
fn defaults() -> BTreeMap<String, toml::Table> {
    let mut sections: BTreeMap<String, toml::Table> = table(&RawConfig::default())
        .into_iter()
        .filter_map(|(k, v)| match v {
            toml::Value::Table(t) => Some((k, t)),
            _ => None,
        })
        .collect();
    // Optional keys given a value, so that they are listed too.
    let route = RawRoute {
        action: Some(String::new()),
        sanitize: RawRouteSanitize {
            replacement: Some(String::new()),
            ..RawRouteSanitize::default()
        },
        timeouts: RawTimeouts {
            response: Some(Dur::secs(1)),
            idle: Some(Dur::secs(1)),
        },
        ..RawRoute::default()
    };
    let mut route = table(&route);
    for (name, value) in [
        ("routes.retry", "retry"),
        ("routes.sanitize", "sanitize"),
        ("routes.timeouts", "timeouts"),
    ] {
        if let Some(toml::Value::Table(t)) = route.get(value) {
            sections.insert(name.into(), t.clone());
        }
    }
    route.insert(
        "retry".into(),
        toml::Value::Table(table(&RawRetry::default())),
    );
    sections.insert("routes".into(), route);
    sections
}

fn keys(t: &toml::Table) -> BTreeSet<&str> {
    t.keys().map(String::as_str).collect()
}

#[test]
fn proxy_toml_states_exactly_the_defaults() {
    let doc: toml::Table = shipped("proxy.toml").parse().expect("proxy.toml parses");
    let mut p = Problems::default();
    let raw = RawConfig::read(doc.clone(), &mut p);
    assert_eq!(p.take_warnings(), Vec::<String>::new());
    p.finish(Some(())).expect("proxy.toml reads cleanly");
    let defaults = defaults();
    let read = table(&raw);
    for (name, value) in &doc {
        if name == "routes" {
            continue;
        }
        let (Some(toml::Value::Table(stated)), Some(toml::Value::Table(as_read))) =
            (Some(value), read.get(name))
        else {
            panic!("[{name}] is not a table");
        };
        let default = &defaults[name];
        assert_eq!(keys(stated), keys(default), "[{name}] must state every key");
        assert_eq!(as_read, default, "[{name}] must state the defaults");
    }
    assert_eq!(
        keys(&doc),
        keys(&table(&RawConfig::default())),
        "proxy.toml must have every section"
    );
    // The example route states the retry defaults in full.
    let retry = doc["routes"][0]["retry"]
        .as_table()
        .expect("[routes.retry]");
    assert_eq!(keys(retry), keys(&defaults["routes.retry"]));
    assert_eq!(raw.routes[0].retry, RawRetry::default());
}

/// The README's configuration tables: section → key → its default column.
fn readme_tables(readme: &str) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut tables: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut section: Option<String> = None;
    for line in readme.lines() {
        if line.starts_with('#') {
            section = line
                .trim_start_matches('#')
                .trim()
                .strip_prefix("`[")
                .and_then(|s| s.strip_suffix("]`"))
                .map(|s| s.trim_matches(['[', ']']).to_owned());
            continue;
        }
        let Some(section) = &section else { continue };
        let cells: Vec<&str> = line.split(" | ").map(str::trim).collect();
        let key = cells.first().and_then(|c| c.strip_prefix("| `"));
        if let (Some(key), Some(default)) = (key.and_then(|k| k.strip_suffix('`')), cells.get(1)) {
            let rows = tables.entry(section.clone()).or_default();
            rows.insert(key.to_owned(), (*default).to_owned());
        }
    }
    tables
}

#[test]
fn readme_documents_every_key_with_its_default() {
    let documented = readme_tables(&shipped("README.md"));
    for (section, default) in defaults() {
        let rows = documented
            .get(&section)
            .unwrap_or_else(|| panic!("README has no table for [{section}]"));
        let stated: BTreeSet<&str> = rows.keys().map(String::as_str).collect();
        assert_eq!(stated, keys(&default), "README keys of [{section}]");
        for (key, cell) in rows {
            // A literal default (`30`, `"spool"`, `[]`) must be the built-in one; prose
            // ("required", "see below") is not checked.
            let literal = cell.strip_prefix('`').and_then(|c| c.strip_suffix('`'));
            let Some(value) = literal.and_then(|l| format!("v = {l}").parse::<toml::Table>().ok())
            else {
                continue;
            };
            assert_eq!(
                Some(comparable(&value["v"])),
                default.get(key).map(comparable),
                "README default of `{section}.{key}`"
            );
        }
    }
}

/// A value to compare: a duration by its length (`"120s"` is `"2m"`), anything else as is.
fn comparable(v: &toml::Value) -> toml::Value {
    match v.as_str().map(str::parse::<Dur>) {
        Some(Ok(d)) => toml::Value::Integer(d.millis() as i64),
        _ => v.clone(),
    }
}

#[test]
fn readme_lists_every_deprecated_key() {
    let readme = shipped("README.md");
    for (table, old, new, _) in RENAMED {
        let row = format!("| `{table}.{old}` | `{table}.{new}` |");
        assert!(readme.contains(&row), "README lacks {row}");
    }
}

#[test]
fn readme_environment_example_is_a_working_config() {
    let readme = shipped("README.md");
    let example = readme
        .split_once("**Environment variables in the file.**")
        .and_then(|(_, rest)| rest.split_once("```toml\n"))
        .and_then(|(_, rest)| rest.split_once("```"))
        .map(|(example, _)| example.to_owned())
        .expect("the README's example");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, example).expect("write");
    let env = |k: &str| match k {
        "DATABASE_URL" => Some("postgres://app@db:5432/app".to_owned()),
        "N8N_URL" => Some("http://n8n.internal:5678".to_owned()),
        _ => None,
    };
    let c = super::Config::load_with(&path, None, &env).expect("valid");
    assert_eq!(c.database.pg.get_dbname(), Some("app"));
    assert_eq!(c.routes[0].upstream_authority.as_str(), "n8n.internal:5678");
    assert_eq!(c.server.listen.to_string(), "0.0.0.0:8080");
    assert!(c.admin.token.is_none());
}
