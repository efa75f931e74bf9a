//! A private, throwaway PostgreSQL cluster for outage tests: it can be stopped abruptly,
//! restarted and frozen without touching the shared server the other tests use.
//!
//! Each [`TestCluster`] lives in its own temporary directory (data directory, unix socket and
//! server log) and listens on its own free port on 127.0.0.1. When the tests run as root the
//! server binaries run as the `postgres` user through `runuser`, since PostgreSQL refuses root.

use std::fs;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use tokio_postgres::NoTls;

/// How long [`TestCluster::start`] and [`TestCluster::restart`] wait for the server to accept.
const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// A private PostgreSQL cluster; stopped and deleted when dropped.
pub struct TestCluster {
    ctl: Ctl,
    port: u16,
    // Dropped last (after `Drop::drop` has stopped the server): removes everything.
    _dir: tempfile::TempDir,
}

/// What is needed to run the server binaries; cheap to clone into blocking tasks.
#[derive(Clone)]
struct Ctl {
    bin: PathBuf,
    /// The cluster directory: parent of the data directory, unix socket directory, logs.
    dir: PathBuf,
    /// Run the binaries as `postgres` via `runuser` (the tests run as root).
    as_postgres: bool,
}

impl TestCluster {
    /// Creates (initdb) and starts a new cluster; returns once it accepts connections.
    pub async fn start() -> TestCluster {
        let bin = server_bin_dir();
        let tmp = tempfile::Builder::new()
            .prefix("tpcl-")
            .tempdir()
            .expect("create the cluster's temporary directory");
        let dir = tmp.path().to_path_buf();
        let as_postgres = fs::metadata(&dir).expect("stat cluster dir").uid() == 0;
        if as_postgres {
            let (uid, gid) = postgres_ids();
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid))
                .unwrap_or_else(|e| panic!("chown {} to postgres: {e}", dir.display()));
        }
        let ctl = Ctl {
            bin,
            dir,
            as_postgres,
        };
        let socket_path_len = ctl.dir.as_os_str().len() + "/.s.PGSQL.65535.lock".len();
        assert!(
            socket_path_len < 100,
            "cluster dir {} is too long for a unix socket path (TMPDIR?)",
            ctl.dir.display()
        );

        let ctl2 = ctl.clone();
        let port = tokio::task::spawn_blocking(move || ctl2.init_and_start())
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        let cluster = TestCluster {
            ctl,
            port,
            _dir: tmp,
        };
        cluster.wait_ready().await;
        cluster
    }

    /// `postgres://postgres@127.0.0.1:{port}/postgres`
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `pg_ctl stop -m immediate` (an abrupt, crash-like stop); returns once the port refuses
    /// connections.
    pub fn stop_immediate(&self) {
        let out = self
            .ctl
            .pg_ctl(&["stop", "-m", "immediate", "-w", "-t", "30"]);
        assert!(
            out.status.success(),
            "pg_ctl stop -m immediate failed: {}\n{}",
            output_text(&out),
            self.ctl.log_tail()
        );
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            assert!(
                Instant::now() < deadline,
                "port {} still accepts connections after pg_ctl stop",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the stopped cluster again (crash recovery included); returns once it accepts
    /// connections.
    pub async fn restart(&self) {
        let ctl = self.ctl.clone();
        let out = tokio::task::spawn_blocking(move || ctl.start_server())
            .await
            .expect("pg_ctl start task");
        assert!(
            out.status.success(),
            "pg_ctl start (restart) failed: {}\n{}",
            output_text(&out),
            self.ctl.log_tail()
        );
        self.wait_ready().await;
    }

    /// SIGSTOPs the postmaster and all its children: new connections are neither accepted nor
    /// refused (the kernel completes the TCP handshake, then nothing answers), queries hang.
    pub fn freeze(&self) {
        let pm = self
            .ctl
            .postmaster_pid()
            .expect("freeze: the cluster is not running (no postmaster.pid)");
        // The postmaster first, so that it forks no new children; then its children, twice in
        // case one was being forked at that moment.
        signal("-STOP", &[pm]);
        for _ in 0..2 {
            signal("-STOP", &children_of(pm));
        }
    }

    /// SIGCONTs the postmaster and all its children.
    pub fn thaw(&self) {
        self.ctl.thaw();
    }

    async fn wait_ready(&self) {
        let url = format!("{}?connect_timeout=2", self.url());
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last_err = String::new();
        while Instant::now() < deadline {
            let attempt = tokio::time::timeout(Duration::from_secs(2), async {
                let (client, conn) = tokio_postgres::connect(&url, NoTls).await?;
                tokio::spawn(conn);
                client.simple_query("SELECT 1").await.map(|_| ())
            })
            .await;
            match attempt {
                Ok(Ok(())) => return,
                Ok(Err(e)) => last_err = e.to_string(),
                Err(_) => last_err = "connect timed out".to_owned(),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "private PostgreSQL cluster on port {} did not accept connections within {:?}: \
             {last_err}\n{}",
            self.port,
            READY_TIMEOUT,
            self.ctl.log_tail()
        );
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        // A frozen server would never process the stop request.
        self.ctl.thaw();
        let _ = self
            .ctl
            .pg_ctl(&["stop", "-m", "immediate", "-w", "-t", "10"]);
        // Belt and braces: never leave a server running behind a deleted directory.
        if let Some(pm) = self.ctl.postmaster_pid() {
            let mut pids = children_of(pm);
            pids.push(pm);
            signal("-KILL", &pids);
        }
    }
}

impl Ctl {
    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn log_file(&self) -> PathBuf {
        self.dir.join("server.log")
    }

    /// `bin/<program> args…`, as `postgres` when needed, from inside the cluster directory (the
    /// `postgres` user may not be able to read the current directory).
    fn run(&self, program: &str, args: &[&str]) -> Output {
        let exe = self.bin.join(program);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        cmd.args(args)
            .current_dir(&self.dir)
            .env_remove("PGDATA")
            .env_remove("PGPORT")
            .env_remove("PGHOST")
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", exe.display()))
    }

    fn pg_ctl(&self, args: &[&str]) -> Output {
        let data = self.data_dir();
        let mut all = vec!["-D", data.to_str().expect("utf-8 path")];
        all.extend_from_slice(args);
        self.run("pg_ctl", &all)
    }

    fn start_server(&self) -> Output {
        let log = self.log_file();
        self.pg_ctl(&[
            "start",
            "-w",
            "-t",
            "30",
            "-l",
            log.to_str().expect("utf-8 path"),
        ])
    }

    /// initdb, configure, start; returns the port. Retries with another port when the chosen
    /// one was taken between picking it and the server binding it.
    fn init_and_start(&self) -> u16 {
        let data = self.data_dir();
        let out = self.run(
            "initdb",
            &[
                "-D",
                data.to_str().expect("utf-8 path"),
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "--no-instructions",
                "-E",
                "UTF8",
                "--locale=C",
            ],
        );
        assert!(
            out.status.success(),
            "initdb for the private test cluster failed: {}",
            output_text(&out)
        );
        let socket_dir = self.dir.to_str().expect("utf-8 path");
        // fsync=off is safe here: a process crash (stop -m immediate) keeps the OS page cache.
        // Not synchronous_commit=off: an immediate stop would lose the last commits.
        let base = format!(
            "\n# trace-proxy test cluster\n\
             listen_addresses = '127.0.0.1'\n\
             unix_socket_directories = '{socket_dir}'\n\
             fsync = off\n\
             max_connections = 50\n\
             shared_buffers = 16MB\n"
        );
        let conf = data.join("postgresql.conf");
        let mut text = fs::read_to_string(&conf).expect("read postgresql.conf");
        text.push_str(&base);
        for attempt in 0..5 {
            let port = free_port();
            // The last `port` setting in the file wins.
            text.push_str(&format!("port = {port}\n"));
            fs::write(&conf, &text).expect("write postgresql.conf");
            let out = self.start_server();
            if out.status.success() {
                return port;
            }
            let log = fs::read_to_string(self.log_file()).unwrap_or_default();
            let port_taken = log.contains("could not bind") || log.contains("already in use");
            if !port_taken || attempt == 4 {
                panic!(
                    "pg_ctl start of the private test cluster failed: {}\n{}",
                    output_text(&out),
                    self.log_tail()
                );
            }
        }
        unreachable!()
    }

    fn postmaster_pid(&self) -> Option<u32> {
        let text = fs::read_to_string(self.data_dir().join("postmaster.pid")).ok()?;
        let pid: u32 = text.lines().next()?.trim().parse().ok()?;
        Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
    }

    fn thaw(&self) {
        if let Some(pm) = self.postmaster_pid() {
            let mut pids = vec![pm];
            pids.extend(children_of(pm));
            signal("-CONT", &pids);
        }
    }

    /// The last lines of the server log, for panic messages.
    fn log_tail(&self) -> String {
        let path = self.log_file();
        match fs::read_to_string(&path) {
            Ok(text) => {
                let lines: Vec<&str> = text.lines().collect();
                let tail = lines[lines.len().saturating_sub(30)..].join("\n");
                format!("--- tail of {} ---\n{tail}", path.display())
            }
            Err(e) => format!("(no server log at {}: {e})", path.display()),
        }
    }
}

/// The directory holding `initdb`, `pg_ctl` and `postgres`.
fn server_bin_dir() -> PathBuf {
    let has_server = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        if out.status.success() {
            let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            if has_server(&dir) {
                return dir;
            }
        }
    }
    let mut found: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            has_server(&bin).then_some((version, bin))
        })
        .collect();
    found.sort();
    match found.pop() {
        Some((_, bin)) => bin,
        None => panic!(
            "the outage tests need the PostgreSQL server binaries (initdb, pg_ctl, postgres): \
             neither `pg_config --bindir` nor /usr/lib/postgresql/*/bin has them; \
             scripts/setup-postgres.sh installs them"
        ),
    }
}

/// uid and gid of the `postgres` user.
fn postgres_ids() -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .expect("run id");
        assert!(
            out.status.success(),
            "running as root, but there is no `postgres` user to run the test cluster as: {}",
            output_text(&out)
        );
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("numeric id")
    };
    (id("-u"), id("-g"))
}

/// A port that was free a moment ago.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

/// Direct children of `parent`, from /proc/*/stat.
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = fs::read_to_string(entry.path().join("stat")).ok()?;
            // "pid (comm) state ppid …"; comm may contain spaces and parentheses.
            let after_comm = &stat[stat.rfind(')')? + 1..];
            let ppid: u32 = after_comm.split_whitespace().nth(1)?.parse().ok()?;
            (ppid == parent).then_some(pid)
        })
        .collect()
}

/// `kill <sig> pids…`; errors (a process that just exited) are ignored.
fn signal(sig: &str, pids: &[u32]) {
    if pids.is_empty() {
        return;
    }
    let _ = Command::new("kill")
        .arg(sig)
        .args(pids.iter().map(u32::to_string))
        .output();
}

fn output_text(out: &Output) -> String {
    format!(
        "{}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    )
}

#[tokio::test]
async fn private_cluster_stops_restarts_and_freezes() {
    let started = Instant::now();
    let cluster = TestCluster::start().await;
    assert_ne!(cluster.port(), 5432);
    let url = cluster.url();

    let client = crate::support::connect(&url).await;
    let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    client
        .batch_execute("CREATE TABLE survives (id int); INSERT INTO survives VALUES (42)")
        .await
        .unwrap();
    drop(client);

    cluster.stop_immediate();
    let refused =
        tokio::time::timeout(Duration::from_secs(5), tokio_postgres::connect(&url, NoTls))
            .await
            .expect("a connect attempt to a stopped cluster should fail fast, not hang");
    assert!(refused.is_err(), "connect succeeded on a stopped cluster");

    cluster.restart().await;
    let client = crate::support::connect(&url).await;
    let id: i32 = client
        .query_one("SELECT id FROM survives", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(id, 42, "the table created before the stop is still there");
    drop(client);

    cluster.freeze();
    let hung =
        tokio::time::timeout(Duration::from_secs(1), tokio_postgres::connect(&url, NoTls)).await;
    assert!(
        hung.is_err(),
        "connect to a frozen cluster completed instead of hanging: {:?}",
        hung.map(|r| r.map(|_| ()))
    );

    cluster.thaw();
    let client = tokio::time::timeout(Duration::from_secs(10), crate::support::connect(&url))
        .await
        .expect("connect after thaw");
    let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);

    drop(cluster);
    eprintln!("private cluster smoke test took {:?}", started.elapsed());
}
