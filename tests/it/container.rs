//! What the container image relies on: `trace-proxy health` (its HEALTHCHECK, without curl)
//! exits 0 only on a 2xx answer of the admin listener, and the image's configuration
//! (`config/container.toml`) runs the proxy from the environment alone.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use http::Response;

use crate::support::*;

/// What one run of the binary printed.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn command(args: &[&str], env: &[(&str, String)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_trace-proxy"));
    cmd.args(args).stdin(Stdio::null()).env("NO_COLOR", "1");
    for var in CONFIG_ENV {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    cmd
}

/// Runs the binary to its end off the runtime's threads (the proxy it asks may run on them).
async fn run(args: &[&str], env: &[(&str, String)]) -> Run {
    let mut cmd = command(args, env);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("join")
        .expect("run trace-proxy");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

async fn health(args: &[&str]) -> Run {
    let mut all = vec!["health"];
    all.extend_from_slice(args);
    run(&all, &[]).await
}

fn write_config(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write config");
    path.display().to_string()
}

#[tokio::test]
async fn health_exits_0_on_ready_and_alive_and_asks_an_unspecified_admin_address_on_loopback() {
    let db = TestDb::new().await;
    let toml = config(&db, closed_port().await, "");
    let proxy = Proxy::start_with_admin(&toml).await;
    let admin = proxy.admin.expect("admin listener");

    let r = health(&["--url", &format!("http://{admin}/readyz")]).await;
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert_eq!(r.stdout, format!("http://{admin}/readyz: 200 ready\n"));

    // No --url: the configured admin listener, 0.0.0.0 asked on 127.0.0.1.
    let dir = tempfile::tempdir().expect("tempdir");
    let listen = format!("[admin]\nlisten = \"0.0.0.0:{}\"\n", admin.port());
    let path = write_config(dir.path(), "proxy.toml", &format!("{listen}{toml}"));
    let r = health(&["--config", &path]).await;
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(
        r.stdout.starts_with(&format!(
            "http://127.0.0.1:{}/readyz: 200 ready",
            admin.port()
        )),
        "{}",
        r.stdout
    );
    let r = health(&["--config", &path, "--live"]).await;
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert_eq!(
        r.stdout,
        format!("http://127.0.0.1:{}/healthz: 200 ok\n", admin.port())
    );
    proxy.stop().await;

    // The same command once the proxy is gone.
    let r = health(&["--config", &path]).await;
    assert_eq!(r.code, Some(1), "{}", r.stdout);
    assert!(r.stderr.contains("cannot connect"), "{}", r.stderr);
}

#[tokio::test]
async fn health_exits_1_when_not_ready_and_says_why() {
    // Recording refused while the database is unreachable: /readyz answers 503.
    let dead = closed_port().await;
    let toml = config_toml(
        &format!("postgres://postgres@{dead}/postgres"),
        &format!("http://{}", closed_port().await),
        "on_unavailable = \"reject\"\nconnect_timeout = \"1s\"",
        "",
    );
    let proxy = Proxy::start_with_admin(&toml).await;
    let admin = proxy.admin.expect("admin listener");
    let r = health(&["--url", &format!("http://{admin}/readyz")]).await;
    assert_eq!(r.code, Some(1), "{}", r.stdout);
    assert!(r.stdout.is_empty(), "{}", r.stdout);
    let said = format!("trace-proxy: health: http://{admin}/readyz: 503 not ready: database");
    assert!(r.stderr.starts_with(&said), "{}", r.stderr);
    // Alive all the same.
    let r = health(&["--url", &format!("http://{admin}/healthz")]).await;
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    proxy.stop().await;
}

#[tokio::test]
async fn health_gives_up_at_its_timeout_and_exits_1_on_anything_but_an_answer() {
    // Accepted by the kernel, never answered.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/readyz", silent.local_addr().expect("addr"));
    let started = Instant::now();
    let r = health(&["--url", &url, "--timeout", "300ms"]).await;
    assert_eq!(r.code, Some(1), "{}", r.stdout);
    assert!(r.stderr.contains("no answer within 300ms"), "{}", r.stderr);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let route = "[[routes]]\nname = \"n8n\"\nupstream = \"http://127.0.0.1:1\"\n\
                 source_service = \"bilko-app\"\ndestination_service = \"n8n\"\n";
    let off = write_config(
        dir.path(),
        "off.toml",
        &format!("[admin]\nlisten = \"\"\n{route}"),
    );
    let cases: [(&[&str], &str); 4] = [
        (&["--config", &off], "the admin listener is off"),
        (&["--config", "missing.toml"], "missing.toml: cannot read"),
        (
            &["--url", "https://127.0.0.1:1/readyz"],
            "not a plain http:// URL",
        ),
        (
            &["--url", &url, "--timeout", "0"],
            "the timeout must be longer than 0",
        ),
    ];
    for (args, said) in cases {
        let r = health(args).await;
        // A usage error is clap's 2; everything else a HEALTHCHECK reads as unhealthy, 1.
        let expected = match said.starts_with("the timeout") {
            true => 2,
            false => 1,
        };
        assert_eq!(r.code, Some(expected), "{args:?}: {}", r.stderr);
        assert!(r.stderr.contains(said), "{args:?}: {}", r.stderr);
    }
}

/// The image's configuration file, as shipped.
fn container_toml() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("config/container.toml")
        .display()
        .to_string()
}

#[test]
fn the_container_config_requires_the_database_url_and_defaults_the_rest_for_a_container() {
    let env = |k: &str| match k {
        "TRACE_PROXY_DATABASE_URL" => Some("postgres://tp:secret@db:5432/app".to_owned()),
        _ => None,
    };
    let c = trace_proxy::Config::load_with(Path::new(&container_toml()), None, &env)
        .expect("valid with only the database URL");
    assert_eq!(c.server.listen.to_string(), "0.0.0.0:8080");
    assert_eq!(
        c.admin.serve_on().map(|a| a.to_string()).as_deref(),
        Some("0.0.0.0:8079")
    );
    assert!(c.admin.token.is_none());
    assert_eq!(c.spool.dir, Path::new("/var/lib/trace-proxy/spool"));
    assert_eq!(c.server.shutdown_timeout, Duration::from_secs(25));
    assert!(c.log.json);
    assert_eq!(c.routes[0].upstream_authority.as_str(), "n8n:5678");
    assert_eq!(c.database.pg.get_dbname(), Some("app"));

    let e = trace_proxy::Config::load_with(Path::new(&container_toml()), None, &|_| None)
        .expect_err("no database URL");
    assert!(e.to_string().contains("database.url"), "{e}");
}

#[tokio::test]
async fn the_container_config_serves_from_the_environment_alone_and_stops_on_sigterm() {
    let db = TestDb::new().await;
    let upstream = upstream(|_req| async { Response::new(full("{\"ok\":true}")) }).await;
    let spool = tempfile::tempdir().expect("spool dir");
    let (listen, admin): (SocketAddr, SocketAddr) = (closed_port().await, closed_port().await);
    let env = [
        ("TRACE_PROXY_CONFIG", container_toml()),
        ("TRACE_PROXY_DATABASE_URL", db.url()),
        ("TRACE_PROXY_UPSTREAM", format!("http://{upstream}")),
        ("TRACE_PROXY_LISTEN", listen.to_string()),
        ("TRACE_PROXY_ADMIN_LISTEN", admin.to_string()),
        ("TRACE_PROXY_SPOOL_DIR", spool.path().display().to_string()),
        ("TRACE_PROXY_LOG_FORMAT", "text".to_owned()),
    ];
    let mut child = command(&["serve"], &env)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn trace-proxy");
    let mut ready = None;
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let r = run(&["health"], &env).await;
        if r.code == Some(0) {
            ready = Some(r.stdout);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ready = ready.unwrap_or_else(|| {
        let _ = child.kill();
        panic!("trace-proxy health never exited 0 within 20 s")
    });
    assert_eq!(ready, format!("http://{admin}/readyz: 200 ready\n"));

    let trace_id = new_trace_id();
    let (parts, _) = send(post(
        &format!("http://{listen}/webhook/order"),
        &trace_id,
        "{}",
    ))
    .await;
    assert_eq!(parts.status, 200);
    let row = &db.final_rows(&trace_id, 1).await[0];
    assert_eq!(row.get::<_, String>("overall_status"), "success");
    assert_eq!(row.get::<_, String>("workflow_id"), "order");

    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(kill.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("trace-proxy still running 15 s after SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status.code(), Some(0));
}
