//! The command line as a person (or a script) sees it: every configuration problem at once,
//! errors said once and without colour when stderr is a pipe, choices listed, the configuration
//! file taken from `TRACE_PROXY_CONFIG`, the commit in `--version`.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::support::{closed_port, CONFIG_ENV};

/// What one run printed.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs the binary in `dir` with `args` and `env`, stdout and stderr piped, and nothing from the
/// test's own environment that could change the outcome (`NO_COLOR` included: a pipe alone must
/// keep colour out).
fn run(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_trace-proxy"));
    cmd.args(args).current_dir(dir).stdin(Stdio::null());
    for var in CONFIG_ENV.iter().chain(&["NO_COLOR"]) {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied());
    let out = cmd.output().expect("run trace-proxy");
    let run = Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert!(
        !run.stdout.contains('\x1b') && !run.stderr.contains('\x1b'),
        "colour in a pipe:\n{}{}",
        run.stdout,
        run.stderr
    );
    run
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write config");
    path.display().to_string()
}

const ROUTE: &str =
    "[[routes]]\nname = \"n8n\"\nupstream = \"${N8N_URL:-http://127.0.0.1:5678}\"\n\
                     source_service = \"bilko-app\"\ndestination_service = \"n8n\"\n";

#[test]
fn check_config_lists_every_problem_once_and_nothing_false() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A syntax error, a bad choice, a value of the wrong type, no route at all (which a broken
    // line might have held, so it is not reported).
    let path = write(
        dir.path(),
        "broken.toml",
        "[server]\nmax_connections = = 3\n[database]\non_unavailable = \"maybe\"\n\
         [capture]\nmax_payload_bytes = \"big\"\n",
    );
    let r = run(dir.path(), &["check-config", "--config", &path], &[]);
    assert_eq!(r.code, Some(78), "{}", r.stderr);
    for problem in [
        "broken.toml line 2, column 19: TOML syntax: extra `=`",
        "`database.on_unavailable`: unknown variant `maybe`, expected one of `reject`, `forward`, `spool`",
        "`capture.max_payload_bytes`: invalid type: string \"big\"",
    ] {
        assert_eq!(r.stderr.matches(problem).count(), 1, "{problem}:\n{}", r.stderr);
    }
    assert!(!r.stderr.contains("[[routes]]"), "{}", r.stderr);
    assert!(r.stdout.is_empty(), "{}", r.stdout);
}

#[test]
fn check_config_reads_trace_proxy_config_expands_variables_and_warns_of_old_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(
        dir.path(),
        "env.toml",
        &format!("[server]\nshutdown_timeout_ms = 1500\n{ROUTE}"),
    );
    let r = run(
        dir.path(),
        &["check-config"],
        &[
            ("TRACE_PROXY_CONFIG", &path),
            ("N8N_URL", "http://n8n:5678"),
        ],
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(
        r.stdout.contains("shutdown_timeout = \"1500ms\""),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("upstream = \"http://n8n:5678\""),
        "{}",
        r.stdout
    );
    let warning =
        "`server.shutdown_timeout_ms = 1500` is deprecated; write `shutdown_timeout = \"1500ms\"`";
    assert_eq!(r.stderr.matches(warning).count(), 1, "{}", r.stderr);
    // --config wins over TRACE_PROXY_CONFIG.
    let r = run(
        dir.path(),
        &["check-config", "--config", "missing.toml"],
        &[("TRACE_PROXY_CONFIG", &path)],
    );
    assert_eq!(r.code, Some(66), "{}", r.stderr);
}

#[test]
fn usage_errors_list_the_choices_and_help_describes_every_argument() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = run(dir.path(), &["traces", "stats", "--group-by", "user"], &[]);
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    assert_eq!(r.stderr.matches("error:").count(), 1, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("[possible values: workflow, destination, errorCode]"),
        "{}",
        r.stderr
    );
    for (command, argument) in [
        ("chain", "The trace id"),
        ("diff", "The trace id"),
        ("failures", "The workflow id"),
        ("history", "The user id"),
    ] {
        let r = run(dir.path(), &["traces", command, "--help"], &[]);
        assert!(r.stdout.contains(argument), "{command}: {}", r.stdout);
    }
    let r = run(dir.path(), &["traces", "chain", "--help"], &[]);
    assert!(
        r.stdout.contains("[env: TRACE_PROXY_CONFIG="),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("none:") && r.stdout.contains("full:"),
        "{}",
        r.stdout
    );
}

#[tokio::test]
async fn runtime_errors_are_said_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = dir.path().join("spool");
    // A command: one message for the person who ran it.
    let down = closed_port().await;
    let path = write(
        dir.path(),
        "down.toml",
        &format!(
            "[database]\nurl = \"postgres://postgres@{down}/postgres\"\nconnect_timeout = \"1s\"\n{ROUTE}"
        ),
    );
    let r = run(
        dir.path(),
        &["traces", "chain", "x", "--config", &path],
        &[],
    );
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert_eq!(r.stderr.matches("trace-proxy:").count(), 1, "{}", r.stderr);
    assert!(!r.stderr.contains("trace-proxy failed"), "{}", r.stderr);
    // The service: one log line.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let path = write(
        dir.path(),
        "taken.toml",
        &format!(
            "[server]\nlisten = \"{addr}\"\n[admin]\nlisten = \"\"\n[spool]\ndir = \"{}\"\n{ROUTE}",
            spool.display()
        ),
    );
    let r = run(dir.path(), &["serve", "--config", &path], &[]);
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    let said = format!("cannot listen on {addr}");
    assert_eq!(r.stderr.matches(&said).count(), 1, "{}", r.stderr);
}

#[test]
fn version_names_the_commit_it_was_built_from() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = run(dir.path(), &["--version"], &[]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let version = format!("trace-proxy {}", env!("CARGO_PKG_VERSION"));
    assert!(r.stdout.starts_with(&version), "{}", r.stdout);
    // Built from a checkout, as the tests are unless run from a tarball: its commit now.
    let head = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    if let (Some(head), None) = (head, option_env!("TRACE_PROXY_COMMIT")) {
        assert_eq!(r.stdout.trim(), format!("{version} (commit {head})"));
    }
}

#[tokio::test]
async fn check_config_connect_checks_the_database_and_the_spool_directory() {
    let db = crate::support::TestDb::new().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = dir.path().join("spool");
    let good = format!(
        "[database]\nurl = \"{}\"\n[spool]\ndir = \"{}\"\n{ROUTE}",
        db.url(),
        spool.display()
    );
    let path = write(dir.path(), "good.toml", &good);
    let r = run(
        dir.path(),
        &["check-config", "--connect", "--config", &path],
        &[],
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(
        r.stderr.contains("ok   database postgres://"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("ok   spool directory"), "{}", r.stderr);
    assert!(!r.stderr.contains("password"), "{}", r.stderr);

    // Nothing listening where the database should be, and a spool directory under a file.
    let blocker = dir.path().join("a-file");
    std::fs::write(&blocker, b"x").expect("file");
    let bad = format!(
        "[database]\nurl = \"postgres://postgres:secret@127.0.0.1:{}/none\"\nconnect_timeout = \"1s\"\n\
         [spool]\ndir = \"{}\"\n{ROUTE}",
        closed_port().await.port(),
        blocker.join("spool").display()
    );
    let path = write(dir.path(), "bad.toml", &bad);
    let r = run(
        dir.path(),
        &["check-config", "--connect", "--config", &path],
        &[],
    );
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(
        r.stderr
            .contains("FAIL database postgres://postgres@127.0.0.1:"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("FAIL spool directory"), "{}", r.stderr);
    assert!(!r.stderr.contains("secret"), "{}", r.stderr);
}
