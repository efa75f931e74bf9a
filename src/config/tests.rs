//! Tests of the configuration as a whole: defaults, every problem at once, overlays and
//! environment overrides, routes and their rules.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::*;

const MINIMAL: &str = r#"
    [[routes]]
    name = "n8n"
    upstream = "http://127.0.0.1:5678"
    source_service = "bilko-app"
    destination_service = "n8n"
"#;

#[test]
fn minimal_config_gets_documented_defaults() {
    let c = Config::from_toml_str(MINIMAL).expect("valid");
    assert_eq!(c.server.listen.to_string(), "0.0.0.0:8080");
    assert_eq!(c.database.on_unavailable, OnUnavailable::Spool);
    assert_eq!(c.capture.max_payload_bytes, 65_536);
    assert_eq!(c.routes[0].path_prefix, "/");
    assert_eq!(c.correlation.default_user_id, "anonymous");
}

#[test]
fn every_problem_is_reported_at_once() {
    let text = r#"
        bogus = 1
        [server]
        listen = "not an address"
        [database]
        on_unavailable = "maybe"
        pool_size = 0
        [capture]
        max_payload_bytes = 0
        [correlation]
        user_id_header = "bad header"
        [[routes]]
        name = "a"
        upstream = "ftp://x"
        source_service = ""
        destination_service = "n8n"
    "#;
    let Err(ConfigError::Invalid(problems)) = Config::from_toml_str(text) else {
        panic!("expected invalid config");
    };
    let all = problems.join("\n");
    for needle in [
        "unknown key `bogus`",
        "server.listen",
        "on_unavailable",
        "database.pool_size",
        "capture.max_payload_bytes",
        "user_id_header",
        "scheme ftp",
        "source_service",
    ] {
        assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
    }
}

#[test]
fn sanitize_rules_global_and_per_route() {
    let text = format!(
        r#"
        [sanitize]
        replacement = "<secret>"
        add_keys = ["ssn"]
        remove_keys = ["pin"]
        [[sanitize.add_patterns]]
        name = "order_ref"
        regex = "ORD-[0-9]{{6}}"
        {MINIMAL}
        [routes.sanitize]
        add_keys = ["orderNote"]
        remove_patterns = ["order_ref"]
        [[routes]]
        name = "plain"
        path_prefix = "/plain/"
        upstream = "http://127.0.0.1:5678"
        source_service = "a"
        destination_service = "b"
        "#
    );
    let c = Config::from_toml_str(&text).expect("valid");
    assert_eq!(c.sanitize.replacement(), "<secret>");
    let n8n = c.routes.iter().find(|r| r.name == "n8n").expect("route");
    let plain = c.routes.iter().find(|r| r.name == "plain").expect("route");
    assert!(n8n.sanitizer.is_secret_key("order_note") && n8n.sanitizer.is_secret_key("SSN"));
    assert!(!plain.sanitizer.is_secret_key("orderNote") && !plain.sanitizer.is_secret_key("pin"));
    assert!(
        Arc::ptr_eq(&plain.sanitizer, &c.sanitize),
        "no overrides: shared"
    );
    assert!(c.to_redacted_toml().contains("order_ref"));

    let bad = format!(
        "[sanitize]\nreplacement = \"\"\nremove_patterns = [\"nope\"]\n{MINIMAL}\n[routes.sanitize]\nadd_keys = [\"*\"]\n"
    );
    let Err(ConfigError::Invalid(problems)) = Config::from_toml_str(&bad) else {
        panic!("expected invalid config");
    };
    let all = problems.join("\n");
    assert!(all.contains("`sanitize.replacement`"), "{all}");
    assert!(all.contains("`sanitize.remove_patterns`"), "{all}");
    let bad_route = format!("{MINIMAL}\n[routes.sanitize]\nadd_keys = [\"*\"]\nbogus = 1\n");
    let Err(ConfigError::Invalid(problems)) = Config::from_toml_str(&bad_route) else {
        panic!("expected invalid config");
    };
    let all = problems.join("\n");
    assert!(
        all.contains("routes[0] (\"n8n\"): `routes.sanitize.add_keys`"),
        "{all}"
    );
    assert!(
        all.contains("unknown key `routes.0.sanitize.bogus`"),
        "{all}"
    );
}

#[test]
fn longest_prefix_wins() {
    let text = format!(
        "{MINIMAL}\n[[routes]]\nname = \"cb\"\npath_prefix = \"/callbacks/\"\nupstream = \"http://127.0.0.1:5000/api\"\nsource_service = \"n8n\"\ndestination_service = \"bilko-app\"\n"
    );
    let c = Config::from_toml_str(&text).expect("valid");
    assert_eq!(
        c.route_for("/callbacks/x").map(|r| r.name.as_str()),
        Some("cb")
    );
    assert_eq!(
        c.route_for("/webhook/x").map(|r| r.name.as_str()),
        Some("n8n")
    );
    assert_eq!(
        c.route_for("/callbacks/x")
            .map(|r| r.upstream_base_path.as_str()),
        Some("/api")
    );
}

#[test]
fn retention_defaults_overlay_and_validation() {
    let c = Config::from_toml_str(MINIMAL).expect("valid");
    assert_eq!(
        c.retention,
        RetentionConfig {
            detail_days: 30,
            summary_days: None,
            batch_size: 5_000,
            interval: Some(Duration::from_secs(3_600)),
        }
    );
    assert!(c.to_redacted_toml().contains("[retention]"));

    // Per environment, through the overlay.
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("config")).expect("mkdir");
    let main = dir.path().join("proxy.toml");
    std::fs::write(&main, MINIMAL).expect("write");
    std::fs::write(
        dir.path().join("config/staging.toml"),
        "[retention]\ndetail_days = 7\nsummary_days = 90\ninterval_secs = 0\n",
    )
    .expect("write");
    let c = Config::load_with(&main, Some("staging"), &|_| None).expect("valid");
    assert_eq!(c.retention.detail_days, 7);
    assert_eq!(c.retention.summary_days, Some(90));
    assert_eq!(c.retention.batch_size, 5_000);
    assert_eq!(c.retention.interval, None);

    let text = format!(
        "{MINIMAL}\n[retention]\ndetail_days = 0\nsummary_days = 50000\nbatch_size = 0\ninterval_secs = 99999999999\n"
    );
    let Err(ConfigError::Invalid(problems)) = Config::from_toml_str(&text) else {
        panic!("expected invalid retention config");
    };
    let all = problems.join("\n");
    for needle in [
        "retention.detail_days",
        "retention.summary_days",
        "retention.batch_size",
        "retention.interval_secs",
    ] {
        assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
    }
    // summary_days shorter than detail_days would delete summaries of rows still in detail.
    let text = format!("{MINIMAL}\n[retention]\ndetail_days = 30\nsummary_days = 29\n");
    assert!(Config::from_toml_str(&text).is_err());
    let text = format!("{MINIMAL}\n[retention]\ndetail_days = 30\nsummary_days = 30\n");
    assert!(Config::from_toml_str(&text).is_ok());
}

#[test]
fn overlay_then_environment_overrides() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("config")).expect("mkdir");
    let main = dir.path().join("proxy.toml");
    std::fs::write(
        &main,
        format!("[server]\nlisten = \"127.0.0.1:1\"\n{MINIMAL}"),
    )
    .expect("write");
    std::fs::write(
        dir.path().join("config/test.toml"),
        "[server]\nlisten = \"127.0.0.1:2\"\n[capture]\nmax_payload_bytes = 10\n",
    )
    .expect("write");
    let vars = |k: &str| match k {
        "TRACE_PROXY_ENV" => Some("test".to_owned()),
        "TRACE_PROXY_DATABASE_URL" => Some("postgres://u:hunter2@db:5432/x".to_owned()),
        _ => None,
    };
    let c = Config::load_with(&main, None, &vars).expect("valid");
    assert_eq!(c.environment.as_deref(), Some("test"));
    assert_eq!(c.server.listen.to_string(), "127.0.0.1:2");
    assert_eq!(c.capture.max_payload_bytes, 10);
    assert_eq!(c.database.pg.get_dbname(), Some("x"));
    let printed = c.to_redacted_toml();
    assert!(!printed.contains("hunter2"), "{printed}");
    assert!(!format!("{c:?}").contains("hunter2"));
    let vars2 = |k: &str| match k {
        "TRACE_PROXY_LISTEN" => Some("127.0.0.1:3".to_owned()),
        "TRACE_PROXY_SPOOL_DIR" => Some("/data/spool".to_owned()),
        "TRACE_PROXY_DATABASE_URL" => Some("postgres://a@h/primary".to_owned()),
        "DATABASE_URL" => Some("postgres://a@h/fallback".to_owned()),
        _ => None,
    };
    let c = Config::load_with(&main, Some("test"), &vars2).expect("valid");
    assert_eq!(c.server.listen.to_string(), "127.0.0.1:3");
    assert_eq!(c.database.pg.get_dbname(), Some("primary"));
    assert_eq!(c.spool.dir, PathBuf::from("/data/spool"));
    // A bare DATABASE_URL (another program's, as often as not) is not read.
    let unrelated = |k: &str| (k == "DATABASE_URL").then(|| "postgres://a@h/other".to_owned());
    let c = Config::load_with(&main, Some("test"), &unrelated).expect("valid");
    assert_eq!(c.database.pg.get_dbname(), Some("postgres"));
}

#[test]
fn deprecated_duration_keys_still_work_with_a_warning() {
    let text = format!(
        "[server]\nshutdown_timeout_ms = 1500\n[retention]\ndetail_days = 7\ninterval_secs = 0\n\
         {MINIMAL}\n[routes.retry]\nmax_attempts = 2\nbackoff_initial_ms = 10\n"
    );
    let c = Config::from_toml_str(&text).expect("valid");
    assert_eq!(c.server.shutdown_timeout, Duration::from_millis(1500));
    assert_eq!(c.retention.detail_days, 7);
    assert_eq!(c.retention.interval, None);
    let warnings = c.warnings.join("\n");
    for expected in [
        "`server.shutdown_timeout_ms = 1500` is deprecated; write `shutdown_timeout = \"1500ms\"`",
        "`retention.detail_days = 7` is deprecated; write `detail_max_age = \"7d\"`",
        "`retention.interval_secs = 0` is deprecated; write `interval = \"0\"`",
        "`routes.0.retry.backoff_initial_ms = 10` is deprecated; write `backoff_initial = \"10ms\"`",
    ] {
        assert!(warnings.contains(expected), "{expected} not in:\n{warnings}");
    }
    assert_eq!(c.warnings.len(), 4, "{warnings}");
    let printed = c.to_redacted_toml();
    assert!(
        printed.contains("shutdown_timeout = \"1500ms\""),
        "{printed}"
    );
    assert!(
        !printed.contains("_ms =") && !printed.contains("_days ="),
        "{printed}"
    );
    assert!(Config::from_toml_str(MINIMAL)
        .expect("valid")
        .warnings
        .is_empty());

    // Problems name the key as it was written.
    let text = format!("[retention]\ndetail_days = 0\n[server]\nshutdown_timeout_ms = \"x\"\nheader_read_timeout_ms = 1\nheader_read_timeout = \"1s\"\n{MINIMAL}");
    let Err(ConfigError::Invalid(problems)) = Config::from_toml_str(&text) else {
        panic!("expected invalid config");
    };
    let all = problems.join("\n");
    for expected in [
        "`retention.detail_max_age` (written as `retention.detail_days = 0`)",
        "`server.shutdown_timeout`: `shutdown_timeout_ms` must be a whole number of milliseconds, got \"x\"",
        "`server.header_read_timeout_ms` and `server.header_read_timeout` are both set",
    ] {
        assert!(all.contains(expected), "{expected} not in:\n{all}");
    }
    assert_eq!(problems.len(), 3, "{all}");

    // Each file is renamed before the overlay merges: an overlay's old key overrides the new one.
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("config")).expect("mkdir");
    let main = dir.path().join("proxy.toml");
    std::fs::write(
        &main,
        format!("[server]\nshutdown_timeout = \"30s\"\n{MINIMAL}"),
    )
    .expect("write");
    std::fs::write(
        dir.path().join("config/old.toml"),
        "[server]\nshutdown_timeout_ms = 250\n",
    )
    .expect("write");
    let c = Config::load_with(&main, Some("old"), &|_| None).expect("valid");
    assert_eq!(c.server.shutdown_timeout, Duration::from_millis(250));
    assert!(c.warnings[0].contains("config/old.toml: `server.shutdown_timeout_ms = 250`"));
}

fn problems(text: &str) -> Vec<String> {
    match Config::from_toml_str(text) {
        Err(ConfigError::Invalid(problems)) => problems,
        other => panic!("expected invalid config, got {other:?}"),
    }
}

#[test]
fn syntax_and_type_errors_hide_nothing_and_add_nothing_false() {
    // Two broken lines (one in [server], one a [[routes]] header) and a bad value elsewhere:
    // all three reported, nothing about what the broken lines may have held.
    let text = "[server]\nlisten = \"0.0.0.0:8080\"\nmax_connections = = 3\n\
                [database]\non_unavailable = \"maybe\"\n\
                [[routes]]\nname = \"n8n\"\nupstream = \"http://127.0.0.1:5678\"\n\
                source_service = \"a\"\ndestination_service = \"b\"\n[[routes]\nname = \"x\n";
    let found = problems(text);
    let all = found.join("\n");
    assert!(
        all.contains("config line 3, column 19: TOML syntax: extra `=`"),
        "{all}"
    );
    assert!(
        all.contains("config line 11, column 10: TOML syntax: unclosed array table"),
        "{all}"
    );
    assert!(
        all.contains("`database.on_unavailable`: unknown variant `maybe`"),
        "{all}"
    );
    assert!(
        !all.contains("[[routes]]") && !all.contains("server."),
        "{all}"
    );
    assert_eq!(
        found.iter().filter(|p| !p.contains("TOML syntax")).count(),
        1,
        "{all}"
    );

    // Values of the wrong type: each named, the rest checked, nothing about their stand-ins
    // (the default writer_tasks would exceed pool_size = 1).
    let text = format!(
        "[server]\nlisten = 5\nmax_connections = 0\n[database]\npool_size = \"x\"\n\
         [admin]\npool_size = 1\n{MINIMAL}"
    );
    let found = problems(&text);
    assert_eq!(
        found,
        [
            "`database.pool_size`: invalid type: string \"x\", expected usize",
            "`server.listen`: invalid type: integer `5`, expected a string",
            "`server.max_connections` must be greater than 0",
        ]
    );
    let text = "[database]\npool_size = 1\nwriter_tasks = \"x\"\n";
    assert_eq!(
        problems(text).len(),
        2,
        "writer_tasks and the missing route"
    );

    // A [[routes]] that cannot be read is not "missing".
    assert_eq!(
        problems("routes = 5\n"),
        ["`routes`: must be an array of tables (`[[routes]]`)"]
    );
    assert_eq!(
        problems("[[routes]]\nname = 5\nupstream = \"http://x\"\nsource_service = \"a\"\ndestination_service = \"b\"\n"),
        ["`routes.0.name`: invalid type: integer `5`, expected a string"]
    );

    // A broken overlay leaves the file's own problems reported.
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("config")).expect("mkdir");
    let main = dir.path().join("proxy.toml");
    std::fs::write(
        &main,
        format!("[capture]\nmax_payload_bytes = 0\n{MINIMAL}"),
    )
    .expect("write");
    std::fs::write(dir.path().join("config/bad.toml"), "[log\n").expect("write");
    let Err(ConfigError::Invalid(found)) = Config::load_with(&main, Some("bad"), &|_| None) else {
        panic!("expected invalid config");
    };
    let all = found.join("\n");
    assert!(
        all.contains("config/bad.toml line 1, column 5: TOML syntax"),
        "{all}"
    );
    assert!(
        all.contains("`capture.max_payload_bytes` must be greater than 0"),
        "{all}"
    );
    assert_eq!(found.len(), 2, "{all}");
}

#[test]
fn listen_addresses_may_be_host_names_resolved_when_read() {
    let text = format!(
        "[server]\nlisten = \"localhost:8080\"\n[admin]\nlisten = \"localhost:0\"\n{MINIMAL}"
    );
    let c = Config::from_toml_str(&text).expect("valid");
    assert!(c.server.listen.ip().is_loopback() && c.server.listen.port() == 8080);
    assert!(c.admin.serve_on().is_some_and(|a| a.ip().is_loopback()));
    assert!(c.to_redacted_toml().contains("listen = \"localhost:8080\""));
    let text = format!(
        "[server]\nlisten = \"localhost\"\n[admin]\nlisten = \"no-such-host.invalid:1\"\n{MINIMAL}"
    );
    let all = problems(&text).join("\n");
    assert!(all.contains("`server.listen` \"localhost\": "), "{all}");
    assert!(
        all.contains("`admin.listen` \"no-such-host.invalid:1\": "),
        "{all}"
    );
    assert!(all.contains("(\"\" turns the admin API off)"), "{all}");
}

#[test]
fn variables_in_values_come_from_the_environment() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("config")).expect("mkdir");
    let main = dir.path().join("proxy.toml");
    std::fs::write(
        &main,
        "[database]\nurl = \"${DATABASE_URL}\"\n[admin]\nlisten = \"${ADMIN_LISTEN:-127.0.0.1:0}\"\n\
         [[routes]]\nname = \"n8n\"\nupstream = \"${N8N_URL:-http://127.0.0.1:5678}\"\n\
         source_service = \"bilko-app\"\ndestination_service = \"n8n\"\n",
    )
    .expect("write");
    // The overlay replaces a reference that could not be expanded: not a problem.
    std::fs::write(
        dir.path().join("config/local.toml"),
        "[database]\nurl = \"postgres://u@db/local\"\n",
    )
    .expect("write");
    let vars = |k: &str| match k {
        "DATABASE_URL" => Some("postgres://u@db/opted-in".to_owned()),
        "N8N_URL" => Some("http://n8n:5678/base".to_owned()),
        _ => None,
    };
    let c = Config::load_with(&main, None, &vars).expect("valid");
    assert_eq!(c.database.pg.get_dbname(), Some("opted-in"));
    assert_eq!(c.routes[0].upstream_authority.as_str(), "n8n:5678");
    assert_eq!(c.routes[0].upstream_base_path, "/base");
    assert_eq!(
        c.admin.serve_on().map(|a| a.to_string()).as_deref(),
        Some("127.0.0.1:0")
    );
    let c = Config::load_with(&main, Some("local"), &|_| None).expect("valid");
    assert_eq!(c.database.pg.get_dbname(), Some("local"));
    assert_eq!(c.routes[0].upstream_authority.as_str(), "127.0.0.1:5678");
    let Err(ConfigError::Invalid(found)) = Config::load_with(&main, None, &|_| None) else {
        panic!("expected invalid config");
    };
    assert_eq!(
        found,
        ["`database.url`: environment variable `DATABASE_URL` is not set (write `${DATABASE_URL:-default}` for a default, `$$` for a literal `$`)"]
    );
}

#[test]
fn route_timeouts_override_upstreams_and_are_checked() {
    let text = format!(
        "[upstream]\nresponse_timeout = \"30s\"\nidle_timeout = \"1m\"\n{MINIMAL}\n[routes.timeouts]\nresponse = \"65m\"\nidle = \"0s\"\n\n[[routes]]\nname = \"cb\"\npath_prefix = \"/cb/\"\nupstream = \"http://127.0.0.1:5000\"\nsource_service = \"n8n\"\ndestination_service = \"bilko-app\"\n"
    );
    let c = Config::from_toml_str(&text).expect("valid");
    let long = c.route_for("/webhook/x").expect("n8n");
    assert_eq!(
        long.response_timeout(&c.upstream),
        Duration::from_secs(65 * 60)
    );
    assert_eq!(long.idle_timeout(&c.upstream), None);
    let cb = c.route_for("/cb/x").expect("cb");
    assert_eq!(cb.response_timeout(&c.upstream), Duration::from_secs(30));
    assert_eq!(cb.idle_timeout(&c.upstream), Some(Duration::from_secs(60)));

    let all = problems(&format!(
        "{MINIMAL}\n[routes.timeouts]\nresponse = \"0s\"\nidel = \"1s\"\n"
    ))
    .join("\n");
    assert!(
        all.contains("`timeouts.response` must be more than 0s"),
        "{all}"
    );
    assert!(all.contains("unknown field `idel`"), "{all}");
}

#[test]
fn trusted_proxies_are_addresses_or_blocks() {
    let c = Config::from_toml_str(&format!(
        "[server]\ntrusted_proxies = [\"10.0.0.0/8\", \"127.0.0.1\"]\n{MINIMAL}"
    ))
    .expect("valid");
    assert!(c.server.trusts("10.1.2.3".parse().expect("ip")));
    assert!(c.server.trusts("127.0.0.1".parse().expect("ip")));
    assert!(!c.server.trusts("192.168.0.1".parse().expect("ip")));
    let all = problems(&format!(
        "[server]\ntrusted_proxies = [\"everyone\"]\n{MINIMAL}"
    ))
    .join("\n");
    assert!(all.contains("server.trusted_proxies"), "{all}");
}

#[test]
fn without_a_url_the_database_is_the_managed_one_in_the_state_directory() {
    let c = Config::from_toml_str(&format!("[server]\nstate_dir = \"/srv/tp\"\n{MINIMAL}"))
        .expect("valid");
    let managed = c.database.managed.as_ref().expect("managed");
    assert_eq!(managed.dir, PathBuf::from("/srv/tp/postgres"));
    assert_eq!(managed.data_dir(), PathBuf::from("/srv/tp/postgres/data"));
    assert_eq!(
        c.database.pg.get_hosts(),
        [tokio_postgres::config::Host::Unix(PathBuf::from(
            "/srv/tp/postgres"
        ))]
    );
    assert_eq!(c.database.pg.get_user(), Some("trace_proxy"));
    assert_eq!(c.spool.dir, PathBuf::from("/srv/tp/spool"));
    assert_eq!(
        c.database.describe(),
        "the managed PostgreSQL in /srv/tp/postgres"
    );

    let env = |k: &str| match k {
        "TRACE_PROXY_STATE_DIR" => Some("/srv/other".to_owned()),
        "TRACE_PROXY_DATABASE_URL" => Some("postgres://u@db/app".to_owned()),
        _ => None,
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("p.toml");
    std::fs::write(&path, MINIMAL).expect("write");
    let c = Config::load_with(&path, None, &env).expect("valid");
    assert!(c.database.managed.is_none());
    assert_eq!(c.server.state_dir, PathBuf::from("/srv/other"));
    assert_eq!(c.spool.dir, PathBuf::from("/srv/other/spool"));

    let long = format!("/{}", "d".repeat(100));
    let text = format!("[server]\nstate_dir = \"{long}\"\n{MINIMAL}");
    let Err(ConfigError::Invalid(problems)) = Config::from_toml_str(&text) else {
        panic!("a socket path over 107 bytes must be refused");
    };
    assert!(problems[0].contains("server.state_dir"), "{problems:?}");
    let relative = format!("[server]\nstate_dir = \"state\"\n{MINIMAL}");
    assert!(Config::from_toml_str(&relative).is_err());
}
