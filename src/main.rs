//! The `inferwatch` binary: parse flags, set up logging, load the config and
//! call [`inferwatch::run`] until SIGINT or SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Arg, ArgAction, ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};
use inferwatch::collectors::REGISTRY;
use inferwatch::config::{Config, LogLevel};
use inferwatch::reload::LogControl;

#[derive(Parser)]
#[command(
    name = "inferwatch",
    version = inferwatch::metrics::VERSION_TEXT,
    about = "GPU inference monitoring daemon for Prometheus"
)]
struct Cli {
    /// YAML config file (before or after a subcommand); built-in defaults apply without one.
    #[arg(long = "config", value_name = "PATH", global = true)]
    config: Option<PathBuf>,
    /// Address to serve /metrics and the API on [default: 0.0.0.0:8790, or web.listen_address].
    #[arg(long = "web.listen-address", value_name = "HOST:PORT")]
    listen_address: Option<String>,
    /// Web config file (exporter-toolkit format): TLS, client certificates,
    /// basic auth, response headers [default: web.config_file, or plain HTTP].
    #[arg(long = "web.config.file", value_name = "PATH")]
    web_config_file: Option<PathBuf>,
    /// Log level [default: log.level, or info]. Given, it wins over the
    /// config and a reload cannot change it.
    #[arg(long = "log.level", value_parser = ["debug", "info", "warn", "error"])]
    log_level: Option<String>,
    /// Log format.
    #[arg(long = "log.format", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    /// Serve POST /-/reload (as Prometheus's flag of the same name); SIGHUP
    /// reloads without it.
    #[arg(long = "web.enable-lifecycle")]
    enable_lifecycle: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a config file (with env overrides) and exit 0 if it is valid, 1 if not.
    CheckConfig { path: PathBuf },
    /// Validate a web config file (TLS, basic auth, headers) and exit 0 if it is valid, 1 if not.
    CheckWebConfig { path: PathBuf },
    /// Print the ACL SETUSER line of the least-privilege Redis user for the config (--config): its queues, DLQs, archives and streams, and the commands inferwatch sends.
    RedisAcl {
        /// The user's name.
        #[arg(long, default_value = "inferwatch")]
        user: String,
        /// Put this password in the line [default: the placeholder PASSWORD].
        #[arg(long, default_value = "PASSWORD")]
        password: String,
    },
    /// Print the Prometheus rules (YAML) of the config's (--config) slo: section: error ratios over 5m to 3d, objectives, error budgets and the multi-window burn-rate alerts.
    SloRules,
    /// Show what NVML answers for every GPU field here, and what it costs.
    Doctor {
        /// NVML library to load [default: gpu.nvml_library].
        #[arg(long = "nvml-library", value_name = "PATH")]
        nvml_library: Option<String>,
        /// Reads per field; the median is reported.
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=10000))]
        samples: u32,
        /// Print a JSON document instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// The flags, with `--collector.<name>` / `--no-collector.<name>` for every
/// collector in the registry, as node_exporter has them.
fn parse() -> (Cli, ArgMatches) {
    let mut cmd = Cli::command();
    for e in REGISTRY {
        // clap keeps &'static names; ten short strings live for the process.
        let on: &'static str = format!("collector.{}", e.name).leak();
        let off: &'static str = format!("no-collector.{}", e.name).leak();
        cmd = cmd
            .arg(
                Arg::new(on)
                    .long(on)
                    .action(ArgAction::SetTrue)
                    .overrides_with(off)
                    .help(format!("Enable the {} collector: {}", e.name, e.about)),
            )
            .arg(
                Arg::new(off)
                    .long(off)
                    .action(ArgAction::SetTrue)
                    .overrides_with(on)
                    .help(format!("Disable the {} collector", e.name)),
            );
    }
    let matches = cmd.get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    (cli, matches)
}

fn main() -> ExitCode {
    let (cli, matches) = parse();
    let config = cli.config.as_deref();
    match &cli.command {
        Some(Command::CheckConfig { path }) => return check_config(path),
        Some(Command::CheckWebConfig { path }) => return check_web_config(path),
        Some(Command::RedisAcl { user, password }) => return redis_acl(config, user, password),
        Some(Command::SloRules) => return slo_rules(config),
        Some(Command::Doctor {
            nvml_library,
            samples,
            json,
        }) => return doctor(config, nvml_library.clone(), *samples as usize, *json),
        None => {}
    }
    match serve(cli, &matches) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("inferwatch: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `inferwatch check-config`: what startup and a reload check too (the
/// keys and ranges, the token files, the health checks' targets, the web
/// config file), with the environment's overrides.
fn check_config(path: &std::path::Path) -> ExitCode {
    let loaded = Config::load(Some(path), |k| std::env::var(k).ok()).map_err(anyhow::Error::from);
    let checked = loaded.and_then(|c| {
        inferwatch::check_config(&c)?;
        Ok(c)
    });
    match checked {
        Ok(c) => {
            for d in c.health.deprecations() {
                println!("WARNING: {d}");
            }
            println!("SUCCESS: {} is valid inferwatch config", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `inferwatch check-web-config`: as the exporter toolkit's own checker,
/// and what rustls cannot honour.
fn check_web_config(path: &std::path::Path) -> ExitCode {
    match inferwatch::webconf::load(path) {
        Ok(loaded) => {
            for i in &loaded.ignored {
                println!("NOTE: not honoured: {i}");
            }
            println!("SUCCESS: {} is valid web config", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `inferwatch redis-acl`: the least-privilege user's ACL SETUSER line.
fn redis_acl(config: Option<&std::path::Path>, user: &str, password: &str) -> ExitCode {
    match Config::load(config, |k| std::env::var(k).ok()) {
        Ok(c) => {
            println!("{}", inferwatch::redis_acl::setuser_line(&c, user, password));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `inferwatch slo-rules`: the rules file on stdout, its header naming the
/// command as given, so a committed file says how to make it again.
fn slo_rules(config: Option<&std::path::Path>) -> ExitCode {
    let Some(path) = config else {
        eprintln!("inferwatch slo-rules: --config is required (the file with the slo: section)");
        return ExitCode::FAILURE;
    };
    match Config::load(Some(path), |k| std::env::var(k).ok()) {
        Ok(c) => {
            let command = format!("inferwatch slo-rules --config {}", path.display());
            print!("{}", inferwatch::inference::slo::render(&c, &command));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `inferwatch doctor`: exit 0 when NVML loaded and a GPU answered.
fn doctor(config: Option<&std::path::Path>, library: Option<String>, samples: usize, json: bool) -> ExitCode {
    let config = match Config::load(config, |k| std::env::var(k).ok()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("inferwatch doctor: {e}");
            return ExitCode::FAILURE;
        }
    };
    let options = inferwatch::doctor::Options::from_config(&config.gpu, library, samples);
    let xid = inferwatch::doctor::xid_lines(&options);
    match inferwatch::doctor::run(&options) {
        Ok(report) => {
            if json {
                let mut value = serde_json::to_value(&report).expect("the report serialises");
                value["xid"] = xid.into();
                println!("{}", serde_json::to_string_pretty(&value).expect("JSON serialises"));
            } else {
                print!("{}", inferwatch::doctor::render(&report));
                for line in &xid {
                    println!("{line}");
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            if json {
                println!("{}", serde_json::json!({ "error": e.to_string(), "xid": xid }));
            }
            eprintln!("inferwatch doctor: {e}");
            for line in &xid {
                eprintln!("{line}");
            }
            ExitCode::FAILURE
        }
    }
}

/// The filter for `level`: our crate at that level, dependencies at warn.
fn filter(level: &str) -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::new(format!("inferwatch={level},warn"))
}

/// Sets up logging: `RUST_LOG` when set, else `--log.level`, else the
/// config's `log.level`, else info. Only the last two can be changed by a
/// reload; the answer says which case this is.
fn init_logging(flag: Option<&str>, config: Option<LogLevel>, format: &str) -> LogControl {
    let (initial, control) = match (tracing_subscriber::EnvFilter::try_from_default_env(), flag) {
        (Ok(env), _) => (env, Some("RUST_LOG is set and decides the log level")),
        (Err(_), Some(level)) => (filter(level), Some("--log.level is given and wins over log.level")),
        (Err(_), None) => (filter(config.unwrap_or(LogLevel::Info).as_str()), None),
    };
    macro_rules! install {
        ($builder:expr) => {{
            let builder = $builder.with_env_filter(initial).with_filter_reloading();
            let handle = builder.reload_handle();
            builder.init();
            match control {
                Some(why) => LogControl::Fixed(why),
                None => LogControl::Settable(Box::new(move |level: LogLevel| {
                    handle.reload(filter(level.as_str())).map_err(|e| e.to_string())
                })),
            }
        }};
    }
    let builder = tracing_subscriber::fmt().with_writer(std::io::stderr);
    if format == "json" {
        install!(builder.json())
    } else {
        install!(builder)
    }
}

/// Applies the flags that win over the config file: at start, and again
/// on every reload.
#[derive(Clone)]
struct Overrides {
    collectors: Vec<(&'static str, bool)>,
    web_config_file: Option<PathBuf>,
    listen_address: Option<String>,
}

impl Overrides {
    fn from(cli: &Cli, matches: &ArgMatches) -> Overrides {
        let mut collectors = Vec::new();
        for e in REGISTRY {
            if matches.get_flag(&format!("collector.{}", e.name)) {
                collectors.push((e.name, true));
            } else if matches.get_flag(&format!("no-collector.{}", e.name)) {
                collectors.push((e.name, false));
            }
        }
        Overrides {
            collectors,
            web_config_file: cli.web_config_file.clone(),
            listen_address: cli.listen_address.clone(),
        }
    }

    fn apply(&self, config: &mut Config) {
        for (name, on) in &self.collectors {
            inferwatch::collectors::set_flag(config, name, *on);
        }
        if let Some(path) = &self.web_config_file {
            config.web.config_file = Some(path.clone());
        }
        if let Some(addr) = &self.listen_address {
            config.web.listen_address = addr.clone();
        }
    }
}

fn serve(cli: Cli, matches: &ArgMatches) -> anyhow::Result<()> {
    let mut config = Config::load(cli.config.as_deref(), |k| std::env::var(k).ok())?;
    let overrides = Overrides::from(&cli, matches);
    overrides.apply(&mut config);
    if cli.listen_address.is_some() {
        config.validate().context("invalid --web.listen-address")?;
    }
    let log = init_logging(cli.log_level.as_deref(), config.log.level, &cli.log_format);
    for d in config.health.deprecations() {
        tracing::warn!("{d}.");
    }
    let source = inferwatch::reload::Source {
        path: cli.config.clone(),
        flags: Box::new(move |c| overrides.apply(c)),
        log,
        lifecycle: cli.enable_lifecycle,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("failed to start the async runtime")?;
    runtime.block_on(async move {
        let addr = config.web.listen_address.clone();
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .with_context(|| format!("failed to listen on {addr}"))?;
        inferwatch::run_from(config, source, listener, shutdown_signal()).await?;
        Ok(())
    })
}

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
            Err(e) => {
                tracing::warn!(error = %e, "Cannot listen for SIGTERM.");
                std::future::pending::<()>().await
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("Received SIGINT."),
        _ = term => tracing::info!("Received SIGTERM."),
    }
}
