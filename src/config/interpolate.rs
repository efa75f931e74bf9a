//! `${VAR}` and `${VAR:-default}` in string values (as Vector writes them), so a container can be
//! configured from its environment without a mounted file; `$$` is a literal `$`, and a `$`
//! followed by anything else is kept as it is. Applied to the string values of the merged
//! document, after the overlays (a value an overlay replaced is never expanded), and only to
//! values: what a variable holds cannot change the TOML around it. A problem names the key.

use super::problems::Problems;

/// Expands every string value of `doc`; `var` looks a variable up. A value that cannot be
/// expanded is reported and removed (its default stands in and is not checked).
pub(super) fn expand(
    doc: &mut toml::Table,
    var: &dyn Fn(&str) -> Option<String>,
    p: &mut Problems,
) {
    table(doc, "", var, p);
}

fn table(t: &mut toml::Table, at: &str, var: &dyn Fn(&str) -> Option<String>, p: &mut Problems) {
    let mut failed = Vec::new();
    for (k, v) in t.iter_mut() {
        let key = match at.is_empty() {
            true => k.clone(),
            false => format!("{at}.{k}"),
        };
        if let Err(problem) = value(v, &key, var, p) {
            p.unread(&key, problem);
            failed.push(k.clone());
        }
    }
    for k in failed {
        t.remove(&k);
    }
}

/// Expands `v` in place. A string (or a string in an array of strings) that cannot be expanded
/// is the caller's to remove; problems inside a table are reported under their own keys.
fn value(
    v: &mut toml::Value,
    key: &str,
    var: &dyn Fn(&str) -> Option<String>,
    p: &mut Problems,
) -> Result<(), String> {
    match v {
        toml::Value::String(s) if s.contains('$') => *s = expand_str(s, var)?,
        toml::Value::Table(t) => table(t, key, var, p),
        toml::Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                match item {
                    toml::Value::Table(t) => table(t, &format!("{key}.{i}"), var, p),
                    other => value(other, key, var, p)?,
                }
            }
        }
        _ => {}
    }
    Ok(())
}

/// One string (never echoed in a problem: it may hold a password): `$$` → `$`, `${NAME}` → its value (unset: an error; empty: ""), `${NAME:-text}` →
/// its value, or `text` when it is unset or empty.
fn expand_str(s: &str, var: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        if let Some(after) = rest.strip_prefix("$$") {
            out.push('$');
            rest = after;
        } else if let Some(after) = rest.strip_prefix("${") {
            let end = after
                .find('}')
                .ok_or("a `${` without a closing `}` (`$$` is a literal `$`)")?;
            out.push_str(&reference(&after[..end], var)?);
            rest = &after[end + 1..];
        } else {
            out.push('$');
            rest = &rest[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// What `${inner}` stands for.
fn reference(inner: &str, var: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let (name, default) = match inner.split_once(":-") {
        Some((name, default)) => (name, Some(default)),
        None => (inner, None),
    };
    let valid = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    // The text is not echoed: it may be part of a password.
    if !valid {
        return Err(
            "a `${...}` is not a variable reference: a name is letters, digits and `_` (`$$` is a literal `$`)"
                .into(),
        );
    }
    match (var(name), default) {
        (Some(v), Some(d)) if v.is_empty() => Ok(d.to_owned()),
        (Some(v), _) => Ok(v),
        (None, Some(d)) => Ok(d.to_owned()),
        (None, None) => Err(format!(
            "environment variable `{name}` is not set (write `${{{name}:-default}}` for a default, `$$` for a literal `$`)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(k: &str) -> Option<String> {
        match k {
            "HOST" => Some("n8n".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn references_defaults_and_escapes() {
        for (text, expanded) in [
            ("http://${HOST}:5678", "http://n8n:5678"),
            ("${MISSING:-http://127.0.0.1:5678}", "http://127.0.0.1:5678"),
            ("${HOST:-x}${EMPTY:-y}${EMPTY}", "n8ny"),
            ("pa$$word $HOST a$ $1", "pa$word $HOST a$ $1"),
            ("$${HOST}", "${HOST}"),
            ("${_X:-}", ""),
            ("no dollar", "no dollar"),
        ] {
            assert_eq!(expand_str(text, &env).as_deref(), Ok(expanded), "{text}");
        }
        for (text, problem) in [
            ("${MISSING}", "environment variable `MISSING` is not set"),
            ("${HOST", "without a closing"),
            ("${}", "is not a variable reference"),
            ("${1X}", "is not a variable reference"),
            ("${A B}", "is not a variable reference"),
        ] {
            let e = expand_str(text, &env).expect_err(text);
            assert!(e.contains(problem), "{text}: {e}");
        }
        for secret in [
            "postgres://u:hunter2${@h/db",
            "postgres://u:hunter2${a b}@h/db",
        ] {
            let e = expand_str(secret, &env).expect_err(secret);
            assert!(!e.contains("hunter2"), "{e}");
        }
    }

    #[test]
    fn every_string_value_is_expanded_and_problems_name_their_key() {
        let mut doc: toml::Table = r#"
            top = "${HOST}"
            [server]
            listen = "${LISTEN:-0.0.0.0:8080}"
            max_connections = 5
            [sanitize]
            add_keys = ["${HOST}", "${NOPE}"]
            [[routes]]
            name = "${HOST}"
            upstream = "${UPSTREAM}"
        "#
        .parse()
        .expect("toml");
        let mut p = Problems::default();
        expand(&mut doc, &env, &mut p);
        assert_eq!(doc["top"].as_str(), Some("n8n"));
        assert_eq!(doc["server"]["listen"].as_str(), Some("0.0.0.0:8080"));
        assert_eq!(doc["routes"][0]["name"].as_str(), Some("n8n"));
        assert!(
            doc["routes"][0].get("upstream").is_none() && doc["sanitize"].get("add_keys").is_none()
        );
        assert!(p.is_unread("routes.0.upstream") && p.is_unread("sanitize.add_keys"));
        let problems = p.finish(Some(())).expect_err("two problems");
        assert_eq!(problems.len(), 2, "{problems:?}");
        for start in [
            "`routes.0.upstream`: environment variable `UPSTREAM`",
            "`sanitize.add_keys`: environment variable `NOPE`",
        ] {
            assert!(
                problems.iter().any(|p| p.starts_with(start)),
                "{problems:?}"
            );
        }
    }
}
