//! The `trace-proxy` command: parses the CLI, loads the configuration, runs. No proxy logic.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use trace_proxy::config::{Config, ConfigError};

#[derive(Parser)]
#[command(
    name = "trace-proxy",
    version,
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
    #[arg(long, short, global = true, default_value = "proxy.toml")]
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
    CheckConfig,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
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
    if let Command::CheckConfig = command {
        print!("{}", config.to_redacted_toml());
        return ExitCode::SUCCESS;
    }
    init_logging(&config);
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
    let result = runtime.block_on(async move {
        match command {
            Command::Migrate => migrate(&config).await,
            _ => serve(config).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "trace-proxy failed");
            eprintln!("trace-proxy: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&config.log.level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if config.log.json {
        builder.json().init();
    } else {
        builder.init();
    }
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

async fn serve(config: Config) -> Result<(), Box<dyn std::error::Error>> {
    let listener = tokio::net::TcpListener::bind(config.server.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.server.listen))?;
    trace_proxy::run(listener, Arc::new(config), shutdown_signal()).await?;
    Ok(())
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
