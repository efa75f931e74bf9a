//! Where the configuration comes from: the file given by `--config`, the overlay
//! `config/<env>.toml` beside it, each with its deprecated keys renamed, merged key by key into
//! one TOML document.

use std::path::{Path, PathBuf};

use super::problems::Problems;
use super::ConfigError;

/// The file, then its overlay for `env` (checked to be a plain name), merged.
pub(super) fn read_layers(
    path: &Path,
    env: Option<&str>,
    p: &mut Problems,
) -> Result<toml::Table, ConfigError> {
    let mut doc = read_file(path, p)?;
    if let Some(env) = env {
        if env.is_empty()
            || !env
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            p.push(format!(
                "environment name {env:?} must be letters, digits, '-' or '_'"
            ));
        } else {
            let overlay = read_file(&overlay_path(path, env), p)?;
            merge(&mut doc, overlay);
        }
    }
    Ok(doc)
}

/// `config/<env>.toml` in the directory of `path`.
fn overlay_path(path: &Path, env: &str) -> PathBuf {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    dir.join("config").join(format!("{env}.toml"))
}

fn read_file(path: &Path, p: &mut Problems) -> Result<toml::Table, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    Ok(parse(&path.display().to_string(), &text, p))
}

/// One document, its deprecated keys renamed; a syntax error is reported and leaves the
/// document empty.
pub(super) fn parse(name: &str, text: &str, p: &mut Problems) -> toml::Table {
    let mut doc = text.parse::<toml::Table>().unwrap_or_else(|e| {
        p.push(format!("{name}: TOML syntax: {e}"));
        toml::Table::new()
    });
    super::deprecated::rename(name, &mut doc, p);
    doc
}

/// Overlay tables merge key by key; any other value (arrays included) replaces.
fn merge(base: &mut toml::Table, overlay: toml::Table) {
    for (key, value) in overlay {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(key, v);
            }
        }
    }
}
