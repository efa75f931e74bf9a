//! The `trace-proxy` command: parses the CLI, loads the configuration, runs. No proxy logic.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use trace_proxy::config::{Config, ConfigError};

/// mimalloc instead of the system allocator: a proxied request allocates and frees many small
/// buffers (headers, body frames, the row's fields), and glibc's malloc spent about a sixth of
/// the proxy's instructions per request on them (`ANNOTATE=40 bench/instructions.sh`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "trace-proxy",
    // The crate version and the git commit it was built from (`build.rs`).
    version = env!("TRACE_PROXY_VERSION"),
    about = "Transparent logging reverse proxy for bilko-app and n8n"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(clap::Args, Clone)]
struct ServeArgs {
    /// The configuration file (`config/<env>.toml` overlays are looked up beside it).
    #[arg(
        long,
        short,
        global = true,
        env = "TRACE_PROXY_CONFIG",
        default_value = "proxy.toml"
    )]
    config: PathBuf,
    /// Environment overlay name (default: $TRACE_PROXY_ENV).
    #[arg(long, global = true)]
    env: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy (the default command).
    Serve,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Print the effective configuration (secrets redacted), or every problem in it.
    CheckConfig {
        /// Also check what the configuration points at: the database (reachable, the
        /// credentials, the schema version) and the spool directory (writable). Exit 1 when a
        /// check fails.
        #[arg(long)]
        connect: bool,
    },
    /// Detail retention (DATA-002 D5): archive old traces into summaries.
    Retention {
        #[command(subcommand)]
        action: RetentionAction,
    },
    /// Query stored traces (the admin API's queries, straight from the database).
    Traces {
        #[command(subcommand)]
        query: trace_proxy::api::cli::TracesCommand,
    },
    /// Serve the trace queries as Model Context Protocol tools over stdin/stdout, for an agent
    /// on this machine (read-only; logs go to stderr). The admin listener serves the same
    /// tools at /mcp.
    Mcp,
    /// The spool journal of `[spool] dir` (records kept while PostgreSQL was unavailable).
    Spool {
        #[command(subcommand)]
        action: SpoolAction,
    },
    /// Ask a running proxy's admin listener whether it is ready (`/readyz`) or alive
    /// (`--live`, `/healthz`): exit 0 on a 2xx answer, else 1 (a container HEALTHCHECK).
    Health(trace_proxy::probe::HealthArgs),
}

#[derive(Subcommand)]
enum SpoolAction {
    /// What the journal holds, read without changing it.
    Status,
    /// Replay the journal into PostgreSQL now and resolve what its processes left unresolved
    /// (for a journal whose proxy will not run again; refused while a proxy uses it).
    Replay {
        /// Replay into the configured database even though the journal belongs to another one
        /// (it is then bound to the configured one).
        #[arg(long)]
        into_other_database: bool,
    },
}

#[derive(Subcommand)]
enum RetentionAction {
    /// Run one full pass now and print what it archived and deleted.
    Run {
        /// Act as of this time instead of now (RFC 3339, e.g. 2025-06-01T00:00:00Z).
        #[arg(long, value_parser = trace_proxy::api::cli::time_arg)]
        now: Option<chrono::NaiveDateTime>,
        /// Print what a pass would do; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Health(args)) = &cli.command {
        return health(&cli.serve, args);
    }
    let config = match Config::load(&cli.serve.config, cli.serve.env.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("trace-proxy: {}: {e}", cli.serve.config.display());
            return match e {
                ConfigError::Read { .. } => ExitCode::from(66),
                ConfigError::Invalid(_) => ExitCode::from(78),
            };
        }
    };
    let command = cli.command.unwrap_or(Command::Serve);
    let serving = matches!(command, Command::Serve);
    if let Command::CheckConfig { connect } = command {
        for warning in &config.warnings {
            eprintln!("trace-proxy: warning: {warning}");
        }
        print!("{}", config.to_redacted_toml());
        return match connect {
            false => ExitCode::SUCCESS,
            true => check_connect(&config),
        };
    }
    init_logging(&config);
    for warning in &config.warnings {
        tracing::warn!(%warning, "configuration warning");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("trace-proxy: cannot start the runtime: {e}");
            return ExitCode::from(70);
        }
    };
    // `spool status` reads the journal only.
    let needs_database = !matches!(
        command,
        Command::Spool {
            action: SpoolAction::Status
        }
    );
    let managed = match needs_database {
        false => None,
        true => match start_managed(&config, serving) {
            Ok(m) => m,
            Err(code) => return code,
        },
    };
    let result = runtime.block_on(async move {
        match command {
            Command::Migrate => migrate(&config).await,
            Command::Retention {
                action: RetentionAction::Run { now, dry_run },
            } => retention_run(&config, now, dry_run).await,
            Command::Traces { query } => traces(&config, query).await,
            Command::Mcp => mcp(&config).await,
            Command::Spool { action } => spool(&config, action).await,
            _ => serve(config).await,
        }
    });
    drop(runtime);
    if let Some(m) = managed {
        if let Err(e) = m.stop() {
            report(serving, &trace_proxy::error::error_chain(&e));
        }
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            report(serving, &trace_proxy::error::error_chain(&*e));
            // A retention pass already running elsewhere is a "try again later" (75).
            e.downcast_ref::<trace_proxy::retention::RetentionError>()
                .map_or(ExitCode::FAILURE, |r| ExitCode::from(r.exit_code()))
        }
    }
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&config.log.level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour())
        .with_writer(std::io::stderr);
    if config.log.json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Colour only for a person at a terminal: never in a pipe, a file or a log collector, nor when
/// `NO_COLOR` is set (<https://no-color.org>).
fn colour() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

async fn migrate(config: &Config) -> Result<(), Box<dyn std::error::Error>> {
    let pool = trace_proxy::store::pool(&config.database)?;
    let applied = trace_proxy::migrate_pool(&pool).await?;
    if applied.is_empty() {
        println!("schema up to date");
    } else {
        println!("applied migrations {applied:?}");
    }
    Ok(())
}

/// One retention pass (`retention run`); the report goes to stdout.
async fn retention_run(
    config: &Config,
    now: Option<chrono::NaiveDateTime>,
    dry_run: bool,
) -> Result<(), Box<dyn std::error::Error>> {
    let pool = trace_proxy::store::pool(&config.database)?;
    // A dry run changes nothing, migrations included.
    if config.database.run_migrations && !dry_run {
        let applied = trace_proxy::migrate_pool(&pool).await?;
        if !applied.is_empty() {
            tracing::info!(?applied, "migrations applied");
        }
    }
    let now = now.unwrap_or_else(trace_proxy::trace::now_utc);
    let report = trace_proxy::retention::run_once(&pool, &config.retention, now, dry_run).await?;
    println!("{report}");
    Ok(())
}

/// A failure, said once: a service's is a log line (JSON where logs are), a command's a message
/// for the person who ran it.
fn report(serving: bool, text: &str) {
    match serving {
        true => tracing::error!(error = %text, "trace-proxy failed"),
        false => eprintln!("trace-proxy: {text}"),
    }
}

/// With no `database.url`: the managed PostgreSQL, started (and initialised on first use) for
/// this command; exit code 69 (unavailable) when it cannot be.
fn start_managed(
    config: &Config,
    serving: bool,
) -> Result<Option<trace_proxy::managed_pg::ManagedPostgres>, ExitCode> {
    let Some(db) = &config.database.managed else {
        return Ok(None);
    };
    trace_proxy::managed_pg::ManagedPostgres::start(db)
        .map(Some)
        .map_err(|e| {
            report(serving, &trace_proxy::error::error_chain(&e));
            ExitCode::from(69)
        })
}

async fn serve(config: Config) -> Result<(), Box<dyn std::error::Error>> {
    let listener = tokio::net::TcpListener::bind(config.server.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.server.listen))?;
    // The admin listener (health, metrics; the query API once a token is set) runs unless
    // `admin.listen = ""`.
    let admin = match config.admin.serve_on() {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| format!("cannot listen on {addr} (admin.listen): {e}"))?,
        ),
        None => None,
    };
    let metrics = Arc::new(trace_proxy::metrics::Metrics::default());
    trace_proxy::run_with(
        listener,
        admin,
        Arc::new(config),
        metrics,
        shutdown_signal(),
    )
    .await?;
    Ok(())
}

/// `traces …`: one query, printed to stdout.
async fn traces(
    config: &Config,
    query: trace_proxy::api::cli::TracesCommand,
) -> Result<(), Box<dyn std::error::Error>> {
    print!("{}", trace_proxy::api::cli::run(config, query).await?);
    Ok(())
}

/// `check-config --connect`: each check on its own line (to stderr, after the configuration),
/// exit 1 when one fails.
fn check_connect(config: &Config) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("trace-proxy: cannot start the runtime: {e}");
            return ExitCode::from(70);
        }
    };
    let mut checks = Vec::new();
    let managed = match &config.database.managed {
        None => None,
        Some(db) => match trace_proxy::managed_pg::ManagedPostgres::start(db) {
            Ok(m) => {
                let how = match m.started_here() {
                    true => "started for this check",
                    false => "already running",
                };
                checks.push((
                    true,
                    format!("managed PostgreSQL in {}: {how}", db.dir.display()),
                ));
                Some(m)
            }
            Err(e) => {
                checks.push((false, trace_proxy::error::error_chain(&e)));
                None
            }
        },
    };
    if config.database.managed.is_none() || managed.is_some() {
        checks.extend(runtime.block_on(trace_proxy::check_connect(config)));
    }
    if let Some(m) = managed {
        if let Err(e) = m.stop() {
            checks.push((false, trace_proxy::error::error_chain(&e)));
        }
    }
    let mut ok = true;
    for (passed, line) in checks {
        ok &= passed;
        eprintln!("{} {line}", if passed { "ok  " } else { "FAIL" });
    }
    match ok {
        true => ExitCode::SUCCESS,
        false => ExitCode::FAILURE,
    }
}

/// `mcp`: the MCP tools over stdio until the client closes stdin.
async fn mcp(config: &Config) -> Result<(), Box<dyn std::error::Error>> {
    let pool = trace_proxy::api::query_pool(config)?;
    let metrics = Arc::new(trace_proxy::metrics::Metrics::default());
    let probe = trace_proxy::record::Probe::database_only(pool.clone(), metrics.clone());
    let state = trace_proxy::api::ApiState::queries(pool, &config.admin, metrics, probe);
    trace_proxy::api::mcp::serve_stdio(Arc::new(state)).await?;
    Ok(())
}

/// `spool status` / `spool replay`: a report on stdout.
async fn spool(config: &Config, action: SpoolAction) -> Result<(), Box<dyn std::error::Error>> {
    match action {
        SpoolAction::Status => {
            let s = trace_proxy::spool::status(&config.spool.dir)?;
            println!(
                "spool directory {}: {}",
                s.dir.display(),
                match s.in_use {
                    true => "in use by a running proxy",
                    false => "not in use",
                }
            );
            println!(
                "journal: {} segment(s), {} record(s), {} byte(s) waiting for replay",
                s.segments.len(),
                s.records(),
                s.bytes()
            );
            for seg in s.segments.iter().filter(|seg| seg.torn.is_some()) {
                if let Some(torn) = &seg.torn {
                    println!(
                        "torn: {}: {torn}; {} byte(s) after it are cut off at the next start",
                        seg.segment.path.display(),
                        seg.size - seg.segment.bytes
                    );
                }
            }
            let ids: Vec<String> = s.instances.iter().map(|i| i.to_string()).collect();
            println!("instances: {}", ids.join(", "));
        }
        SpoolAction::Replay {
            into_other_database,
        } => {
            let d = trace_proxy::replay_spool(config, into_other_database).await?;
            println!(
                "replayed {} journal record(s); {} row(s) left unresolved by earlier processes resolved as OUTCOME_UNKNOWN",
                d.records, d.resolved
            );
        }
    }
    Ok(())
}

/// `health`: exit 0 or 1 only, which is what a HEALTHCHECK or an exec probe reads; the answer
/// (or why there is none) is printed, so `docker inspect` shows it. No logging is set up.
fn health(serve: &ServeArgs, args: &trace_proxy::probe::HealthArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("trace-proxy: health: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let load = || Config::load(&serve.config, serve.env.as_deref());
    match runtime.block_on(trace_proxy::probe::check(args, &serve.config, load)) {
        Ok(answer) => {
            println!("{answer}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("trace-proxy: health: {e}");
            ExitCode::FAILURE
        }
    }
}

/// SIGTERM (container stop) or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown signal received");
}
