//! The managed private PostgreSQL: with no `database.url`, each instance records into a cluster of
//! its own in `<server.state_dir>/postgres`, made by the OS's PostgreSQL server binaries on
//! first start (`initdb`), started by the command that needs it (`pg_ctl`), reached over a Unix
//! socket in that directory (no TCP port, so instances never collide) and stopped by the same
//! command when it is done. A command that finds the cluster already running (another command of
//! the same instance started it) uses it and leaves it running.
//!
//! PostgreSQL refuses to run as root: when trace-proxy is root, the server runs as the
//! `postgres` user (which the distributions' server packages create), owning the cluster's
//! directory.

use std::fmt::Write as _;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use nix::unistd::{Gid, Uid, User};

use crate::config::ManagedDb;

/// Where the distributions put the server binaries, newest version first within each pattern;
/// `pg_config --bindir` and `PATH` are asked before these.
const SEARCHED: [&str; 7] = [
    "/usr/lib/postgresql/*/bin",          // Debian, Ubuntu
    "/usr/pgsql-*/bin",                   // Fedora / RHEL with the PGDG packages
    "/usr/bin",                           // Fedora's own postgresql-server
    "/opt/homebrew/opt/postgresql@*/bin", // Homebrew on Apple silicon
    "/usr/local/opt/postgresql@*/bin",    // Homebrew on Intel
    "/opt/homebrew/bin",
    "/usr/local/bin",
];

/// How to get the server binaries, for the message when they are missing.
const INSTALL_HINT: &str = "install the PostgreSQL server: `sudo apt-get install postgresql` (Debian, Ubuntu), `sudo dnf install postgresql-server` (Fedora), `brew install postgresql@17` (macOS); or set database.postgres_bin_dir to where initdb and pg_ctl are, or database.url to an existing PostgreSQL";

/// Why a server binary run as `postgres` may be refused a directory.
const ROOT_HINT: &str = "(as root, the server runs as the `postgres` user, which must be able to enter the state directory and every directory above it: make them searchable (chmod o+x), or choose another server.state_dir)";

#[derive(Debug, thiserror::Error)]
pub enum ManagedError {
    #[error("no database.url is set, so trace-proxy runs a private PostgreSQL, but its server binaries (initdb, pg_ctl, postgres) were not found ({searched}): {INSTALL_HINT}")]
    NotInstalled { searched: String },
    #[error("cannot prepare {dir} for the managed PostgreSQL: {source}")]
    Dir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("trace-proxy runs as root and PostgreSQL will not: it would run as the `postgres` user, which does not exist ({INSTALL_HINT}; or run trace-proxy as an ordinary user)")]
    NoServerUser,
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{step} failed for the managed PostgreSQL in {dir}:\n{log}")]
    Failed {
        step: &'static str,
        dir: PathBuf,
        log: String,
    },
}

/// The server binaries' directory: `database.postgres_bin_dir`, else `pg_config --bindir`, else
/// `PATH`, else the distributions' places.
pub fn find_bin_dir(configured: Option<&Path>) -> Result<PathBuf, ManagedError> {
    if let Some(dir) = configured {
        return match has_server(dir) {
            true => Ok(dir.to_owned()),
            false => Err(ManagedError::NotInstalled {
                searched: format!("not in database.postgres_bin_dir = {}", dir.display()),
            }),
        };
    }
    let mut candidates = Vec::new();
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        if out.status.success() {
            let dir = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            candidates.push(PathBuf::from(dir));
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path));
    }
    for pattern in SEARCHED {
        candidates.extend(expand(pattern));
    }
    candidates.into_iter().find(|d| has_server(d)).ok_or_else(|| {
        ManagedError::NotInstalled {
            searched: "looked via pg_config, PATH and the usual places of Debian, Ubuntu, Fedora and Homebrew".into(),
        }
    })
}

fn has_server(dir: &Path) -> bool {
    ["initdb", "pg_ctl", "postgres"]
        .iter()
        .all(|b| dir.join(b).is_file())
}

/// `pattern` with one `*` in a directory name expanded, highest version first.
fn expand(pattern: &str) -> Vec<PathBuf> {
    let Some((head, tail)) = pattern.split_once('*') else {
        return vec![PathBuf::from(pattern)];
    };
    let (parent, prefix) = head.rsplit_once('/').unwrap_or(("", head));
    let (suffix, rest) = tail.split_once('/').unwrap_or((tail, ""));
    let Ok(entries) = std::fs::read_dir(if parent.is_empty() { "/" } else { parent }) else {
        return Vec::new();
    };
    let mut found: Vec<(Vec<u64>, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let version = name.strip_prefix(prefix)?.strip_suffix(suffix)?;
            let key = version.split('.').map(|n| n.parse().unwrap_or(0)).collect();
            Some((key, e.path().join(rest)))
        })
        .collect();
    found.sort_by(|a, b| b.0.cmp(&a.0));
    found.into_iter().map(|(_, p)| p).collect()
}

/// A running managed cluster; [`ManagedPostgres::stop`] stops it if this command started it.
#[derive(Debug)]
pub struct ManagedPostgres {
    db: ManagedDb,
    bin_dir: PathBuf,
    run_as: Option<(Uid, Gid)>,
    started_here: bool,
}

impl ManagedPostgres {
    /// Initialises the cluster if it does not exist yet, then starts it unless it runs already.
    /// Blocking (it waits for the server to accept connections).
    pub fn start(db: &ManagedDb) -> Result<ManagedPostgres, ManagedError> {
        let bin_dir = find_bin_dir(db.bin_dir.as_deref())?;
        let run_as = match Uid::effective().is_root() {
            false => None,
            true => match User::from_name("postgres") {
                Ok(Some(u)) => Some((u.uid, u.gid)),
                _ => return Err(ManagedError::NoServerUser),
            },
        };
        let mut pg = ManagedPostgres {
            db: db.clone(),
            bin_dir,
            run_as,
            started_here: false,
        };
        pg.prepare_dir()?;
        if !pg.db.data_dir().join("PG_VERSION").is_file() {
            tracing::info!(dir = %pg.db.dir.display(), "initialising the managed PostgreSQL");
            pg.initdb()?;
        }
        pg.write_settings()?;
        if pg.running()? {
            tracing::info!(dir = %pg.db.dir.display(), "using the managed PostgreSQL already running");
            return Ok(pg);
        }
        let log = pg.db.dir.join("server.log");
        let out = pg.run(
            "pg_ctl",
            &[
                "start".as_ref(),
                "-w".as_ref(),
                "-t".as_ref(),
                "60".as_ref(),
                "-D".as_ref(),
                pg.db.data_dir().as_os_str(),
                "-l".as_ref(),
                log.as_os_str(),
            ],
        )?;
        if !out.status.success() {
            return Err(pg.failed("pg_ctl start", &out, Some(&log)));
        }
        pg.started_here = true;
        tracing::info!(dir = %pg.db.dir.display(), "managed PostgreSQL started");
        Ok(pg)
    }

    /// Whether this command started the server (and so stops it).
    pub fn started_here(&self) -> bool {
        self.started_here
    }

    /// Stops the server (fast shutdown: sessions end, everything committed stays) if this
    /// command started it.
    pub fn stop(self) -> Result<(), ManagedError> {
        if !self.started_here {
            return Ok(());
        }
        let data = self.db.data_dir();
        let args = [
            "stop".as_ref(),
            "-w".as_ref(),
            "-m".as_ref(),
            "fast".as_ref(),
            "-D".as_ref(),
            data.as_os_str(),
        ];
        let out = self.run("pg_ctl", &args)?;
        if !out.status.success() {
            return Err(self.failed("pg_ctl stop", &out, None));
        }
        tracing::info!(dir = %self.db.dir.display(), "managed PostgreSQL stopped");
        Ok(())
    }

    /// The cluster's directory: created owner-only (the socket in it needs no other guard),
    /// owned by the server's user.
    fn prepare_dir(&self) -> Result<(), ManagedError> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        let dir = &self.db.dir;
        let err = |source| ManagedError::Dir {
            dir: dir.clone(),
            source,
        };
        if let Some(parent) = dir.parent() {
            std::fs::create_dir_all(parent).map_err(err)?;
        }
        if !dir.is_dir() {
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(dir)
                .map_err(err)?;
        }
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(err)?;
        if let Some((uid, gid)) = self.run_as {
            std::os::unix::fs::chown(dir, Some(uid.as_raw()), Some(gid.as_raw())).map_err(err)?;
        }
        Ok(())
    }

    fn initdb(&self) -> Result<(), ManagedError> {
        let data = self.db.data_dir();
        let user = format!("--username={}", ManagedDb::USER);
        let args = [
            "-D".as_ref(),
            data.as_os_str(),
            user.as_ref(),
            "--auth=trust".as_ref(),
            "--encoding=UTF8".as_ref(),
            "--locale=C".as_ref(),
        ];
        let out = self.run("initdb", &args)?;
        if !out.status.success() {
            return Err(self.failed("initdb", &out, None));
        }
        Ok(())
    }

    /// `trace-proxy.conf` in the cluster, included from `postgresql.conf`: no TCP listener, the
    /// socket in the cluster's directory (rewritten at every start, so a moved state directory
    /// keeps working).
    fn write_settings(&self) -> Result<(), ManagedError> {
        let data = self.db.data_dir();
        let err = |source| ManagedError::Dir {
            dir: data.clone(),
            source,
        };
        let socket_dir = self.db.dir.display().to_string().replace('\'', "''");
        let settings = format!(
            "# Written by trace-proxy at every start of its managed PostgreSQL.\nlisten_addresses = ''\nunix_socket_directories = '{socket_dir}'\nunix_socket_permissions = 0700\nport = {}\n",
            ManagedDb::PORT
        );
        let file = data.join("trace-proxy.conf");
        std::fs::write(&file, settings).map_err(err)?;
        let main = data.join("postgresql.conf");
        let conf = std::fs::read_to_string(&main).map_err(err)?;
        let include = "include_if_exists = 'trace-proxy.conf'";
        if !conf.lines().any(|l| l.trim() == include) {
            let mut conf = conf;
            let _ = write!(conf, "\n{include}\n");
            std::fs::write(&main, conf).map_err(err)?;
        }
        if let Some((uid, gid)) = self.run_as {
            std::os::unix::fs::chown(&file, Some(uid.as_raw()), Some(gid.as_raw())).map_err(err)?;
        }
        Ok(())
    }

    /// `pg_ctl status`: 0 running, 3 not running; anything else is a failure.
    fn running(&self) -> Result<bool, ManagedError> {
        let data = self.db.data_dir();
        let out = self.run(
            "pg_ctl",
            &["status".as_ref(), "-D".as_ref(), data.as_os_str()],
        )?;
        match out.status.code() {
            Some(0) => Ok(true),
            Some(3) => Ok(false),
            _ => Err(self.failed("pg_ctl status", &out, None)),
        }
    }

    /// Runs server binary `program` as the server's user, in its own process group (a Ctrl-C
    /// meant for the proxy must not stop the database before the proxy has written its rows).
    fn run(&self, program: &str, args: &[&std::ffi::OsStr]) -> Result<Output, ManagedError> {
        let path = self.bin_dir.join(program);
        let mut cmd = Command::new(&path);
        cmd.args(args)
            .current_dir(&self.db.dir)
            .env("LC_ALL", "C")
            .process_group(0);
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid.as_raw()).gid(gid.as_raw());
        }
        cmd.output().map_err(|source| match self.run_as {
            Some(_) if source.kind() == std::io::ErrorKind::PermissionDenied => {
                ManagedError::Failed {
                    step: "starting the server binaries",
                    dir: self.db.dir.clone(),
                    log: format!("{}: {source}\n{ROOT_HINT}", path.display()),
                }
            }
            _ => ManagedError::Spawn {
                program: path,
                source,
            },
        })
    }

    fn failed(&self, step: &'static str, out: &Output, log: Option<&Path>) -> ManagedError {
        let mut text = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        if let Some(tail) = log.and_then(|l| std::fs::read_to_string(l).ok()) {
            let lines: Vec<&str> = tail.lines().rev().take(10).collect();
            for l in lines.into_iter().rev() {
                text.push('\n');
                text.push_str(l);
            }
        }
        if self.run_as.is_some() && text.contains("ermission denied") {
            text.push('\n');
            text.push_str(ROOT_HINT);
        }
        ManagedError::Failed {
            step,
            dir: self.db.dir.clone(),
            log: text,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versioned_places_are_searched_newest_first() {
        let root = tempfile::tempdir().expect("tempdir");
        for v in ["9.6", "15", "17", "16.2", "notes"] {
            std::fs::create_dir_all(root.path().join(format!("postgresql@{v}/bin"))).expect("dir");
        }
        let pattern = format!("{}/postgresql@*/bin", root.path().display());
        let found: Vec<String> = expand(&pattern)
            .iter()
            .map(|p| {
                p.strip_prefix(root.path())
                    .expect("under root")
                    .display()
                    .to_string()
            })
            .collect();
        assert_eq!(
            found[..4],
            [
                "postgresql@17/bin",
                "postgresql@16.2/bin",
                "postgresql@15/bin",
                "postgresql@9.6/bin"
            ]
        );
    }

    #[test]
    fn a_configured_directory_without_the_server_is_refused_with_the_install_hint() {
        let empty = tempfile::tempdir().expect("tempdir");
        let err = find_bin_dir(Some(empty.path())).expect_err("no binaries");
        let text = err.to_string();
        assert!(text.contains("apt-get install postgresql"), "{text}");
        assert!(text.contains(&empty.path().display().to_string()), "{text}");
    }
}
