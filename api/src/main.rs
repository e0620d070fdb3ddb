//! `conveyor-api`: the HTTP API server and operator commands.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use std::time::Duration;

use anyhow::Context;
use axum::serve::Listener as _;
use clap::{Args, Parser, Subcommand};

use conveyor_api::auth::{Authenticator, DEFAULT_MAX_TOKEN_LIFETIME, TokenPolicy};
use conveyor_api::{ApiConfig, AppState, app};
use conveyor_engine::crypto::Key;
use conveyor_engine::http::StepClient;
use conveyor_engine::runner::Runner;
use conveyor_engine::state::AdminRole;
use conveyor_worker::Worker;
use conveyor_worker::settings::{self, ApiSettings, Settings};
use conveyor_worker::telemetry::{self, Telemetry};
use secrecy::ExposeSecret;
use tokio_util::sync::CancellationToken;
use tracing::info;

/// `conveyor-api [serve] [--embedded-workers N]`: without a command it
/// serves, taking `serve`'s options.
#[derive(Parser)]
#[command(
    name = "conveyor-api",
    version,
    about = "Conveyor: durable execution of declarative HTTP connectors",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Args, Debug, Clone, Copy, PartialEq, Eq)]
struct ServeArgs {
    /// Worker loops to run inside the API process (one-machine setups).
    #[arg(long, default_value_t = 0)]
    embedded_workers: usize,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP API (the default command).
    Serve(ServeArgs),
    /// Apply pending database migrations and exit.
    Migrate,
    /// Validate connector definition or template files; prints every
    /// problem with its JSON path and exits non-zero if any file is invalid.
    Validate {
        /// JSON files holding connector definitions.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Run a JSONPath (RFC 9535) query over the JSON document on stdin and
    /// print the node list as a JSON array.
    Jsonpath {
        /// The query, e.g. `$.results[*].id`.
        query: String,
    },
    /// Re-seal every stored credential with the current encryption key
    /// (after moving the old key to CONVEYOR_OLD_ENCRYPTION_KEYS).
    RotateCredentials,
    /// Print a new random encryption key (base64 of 32 bytes).
    GenerateKey,
    /// Print the OpenAPI document (JSON), as served at /api/v1/openapi.json.
    Openapi,
    /// Print a signed development JWT (HS256, CONVEYOR_JWT_SECRET).
    Token {
        /// The workspace id (the calling product's own).
        #[arg(long)]
        workspace: String,
        /// The user id (the calling product's own).
        #[arg(long)]
        user: String,
        /// Lifetime: a number with s, m, h or d (default 1h).
        #[arg(long, default_value = "1h")]
        ttl: String,
    },
    /// Print a one-time sign-in URL for the web console, built from
    /// CONVEYOR_PUBLIC_URL (default http://127.0.0.1:8080).
    ConsoleLink {
        /// The workspace id.
        #[arg(long)]
        workspace: String,
        /// The user id.
        #[arg(long)]
        user: String,
        /// How long the link works: a number with s, m or h, at most 1h
        /// (default 10m).
        #[arg(long, default_value = "10m")]
        ttl: String,
    },
    /// Manage SaaS admins (users allowed on /api/v1/admin routes).
    Admin {
        #[command(subcommand)]
        action: AdminAction,
    },
    /// Manage workspace members (checked when CONVEYOR_REQUIRE_MEMBERSHIP
    /// is true).
    Member {
        #[command(subcommand)]
        action: MemberAction,
    },
}

#[derive(Subcommand)]
enum AdminAction {
    /// Make a user an admin, or change an admin's role.
    Add {
        /// The user id (a token's `sub`).
        user_id: String,
        /// `viewer` (read-only), `operator` (also cancel and re-run any
        /// execution, manage templates) or `owner` (also manage admins).
        #[arg(long, default_value = "owner", value_parser = parse_role)]
        role: AdminRole,
    },
    /// Remove a user from the admins.
    Remove {
        /// The user id.
        user_id: String,
    },
}

#[derive(Subcommand)]
enum MemberAction {
    /// Add a user to a workspace.
    Add {
        /// The workspace id.
        #[arg(long)]
        workspace: String,
        /// The user id (a token's `sub`).
        user_id: String,
    },
    /// Remove a user from a workspace.
    Remove {
        /// The workspace id.
        #[arg(long)]
        workspace: String,
        /// The user id.
        user_id: String,
    },
    /// List a workspace's members.
    List {
        /// The workspace id.
        #[arg(long)]
        workspace: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command.unwrap_or(Command::Serve(cli.serve)) {
        Command::Validate { files } => Ok(validate(&files)),
        Command::Jsonpath { query } => Ok(jsonpath(&query)),
        Command::GenerateKey => {
            println!("{}", Key::generate().to_base64());
            Ok(ExitCode::SUCCESS)
        }
        Command::Openapi => conveyor_api::openapi::document()
            .to_pretty_json()
            .map(|json| {
                println!("{json}");
                ExitCode::SUCCESS
            })
            .context("serialising the OpenAPI document"),
        Command::Serve(args) => {
            runtime().and_then(|(_t, rt)| rt.block_on(serve(args.embedded_workers)))
        }
        Command::Migrate => runtime().and_then(|(_t, rt)| rt.block_on(migrate())),
        Command::RotateCredentials => runtime().and_then(|(_t, rt)| rt.block_on(rotate())),
        Command::Token {
            workspace,
            user,
            ttl,
        } => token(&workspace, &user, &ttl),
        Command::ConsoleLink {
            workspace,
            user,
            ttl,
        } => console_link(&workspace, &user, &ttl),
        Command::Admin { action } => runtime().and_then(|(_t, rt)| rt.block_on(admin(action))),
        Command::Member { action } => runtime().and_then(|(_t, rt)| rt.block_on(member(action))),
    };
    result.unwrap_or_else(|e| {
        eprintln!("error: {e:#}");
        ExitCode::FAILURE
    })
}

/// Installs logging and trace export, then starts the runtime (the OTLP
/// exporter must be built outside it).
fn runtime() -> anyhow::Result<(Telemetry, tokio::runtime::Runtime)> {
    let telemetry = telemetry::init("conveyor-api", settings::log_format()?)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    Ok((telemetry, runtime))
}

async fn serve(embedded_workers: usize) -> anyhow::Result<ExitCode> {
    let settings = Settings::from_env()?;
    let listen = settings.api.listen;
    let auth = authenticator(&settings.api)?;
    let api_config = api_config(
        &settings.api,
        settings.http.allow_private_networks,
        settings.runner.definition_cache_bytes,
    );
    let pool = settings.pool("conveyor-api")?;
    if settings.auto_migrate {
        settings::migrate(&pool).await?;
    } else if let Err(e) = settings::sync_templates(&pool).await {
        tracing::warn!(error = %format!("{e:#}"), "official templates not synced");
    }
    let shutdown = CancellationToken::new();
    tokio::spawn(conveyor_worker::shutdown_on_signal(shutdown.clone()));

    let mut workers = tokio::task::JoinSet::new();
    workers.spawn(conveyor_worker::observe_queue(
        pool.clone(),
        shutdown.clone(),
    ));
    if embedded_workers > 0 {
        let client = StepClient::new(settings.http.clone()).context("building the HTTP client")?;
        let keyring = Arc::new(settings.keyring.clone());
        let sender = conveyor_worker::callbacks::CallbackSender::new(
            pool.clone(),
            keyring.clone(),
            settings.http.allow_private_networks,
        )
        .context("building the callback HTTP client")?;
        workers.spawn(sender.run(shutdown.clone()));
        for i in 0..embedded_workers {
            let mut config = settings.worker.clone();
            config.worker_id = format!("{}-{i}", config.worker_id);
            // One scheduler loop per process is enough.
            config.scheduler &= i == 0;
            let mut runner_config = settings.runner.clone();
            runner_config.worker_id.clone_from(&config.worker_id);
            let (runner, committer) =
                Runner::new(pool.clone(), client.clone(), keyring.clone(), runner_config);
            workers.spawn(committer.run());
            workers
                .spawn(Worker::new(pool.clone(), Arc::new(runner), config).run(shutdown.clone()));
        }
    }

    let listener = telemetry::bind_http(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    info!(address = %listener.local_addr()?, embedded_workers, "conveyor-api listening");
    let stop = shutdown.clone();
    let metrics = telemetry::metrics_handle().ok();
    let state = AppState::new(
        pool.clone(),
        Arc::new(settings.keyring.clone()),
        auth,
        api_config,
        metrics,
    );
    workers.spawn(
        state
            .events
            .clone()
            .listen(pool, shutdown.clone().cancelled_owned()),
    );
    if let Some(addr) = settings.metrics_listen {
        let serving =
            telemetry::serve_metrics(addr, telemetry::metrics_handle()?, shutdown.clone());
        workers.spawn(async move {
            if let Err(e) = serving.await {
                tracing::error!(error = %format!("{e:#}"), "metrics endpoint stopped");
            }
        });
    }
    axum::serve(listener, app(state))
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
        .context("serving HTTP")?;
    while workers.join_next().await.is_some() {}
    Ok(ExitCode::SUCCESS)
}

async fn migrate() -> anyhow::Result<ExitCode> {
    let url = settings::database_url()?;
    let pool = Settings::pool_for(&url, 2, "conveyor-api migrate")?;
    settings::migrate(&pool).await?;
    info!("migrations applied");
    Ok(ExitCode::SUCCESS)
}

async fn rotate() -> anyhow::Result<ExitCode> {
    let keyring = settings::keyring()?;
    let pool = Settings::pool_for(
        &settings::database_url()?,
        2,
        "conveyor-api rotate-credentials",
    )?;
    let count = conveyor_engine::store::credentials::rotate(&pool, &keyring).await?;
    println!(
        "re-sealed {count} credential(s) with key {}",
        keyring.current_id()
    );
    Ok(ExitCode::SUCCESS)
}

fn authenticator(api: &ApiSettings) -> anyhow::Result<Authenticator> {
    let policy = TokenPolicy {
        issuer: api.jwt_issuer.clone(),
        audience: api.jwt_audience.clone(),
        max_lifetime: api
            .jwt_max_lifetime_secs
            .map_or(DEFAULT_MAX_TOKEN_LIFETIME, Duration::from_secs),
    };
    Authenticator::with_policy(api.jwt_secret()?.expose_secret(), policy)
}

/// The API's settings: what is set, else the API's defaults.
fn api_config(
    api: &ApiSettings,
    allow_private_networks: bool,
    definition_cache_bytes: u64,
) -> ApiConfig {
    let defaults = ApiConfig::default();
    ApiConfig {
        rate_limit_per_sec: api
            .rate_limit_per_sec
            .unwrap_or(defaults.rate_limit_per_sec),
        max_request_bytes: api.max_request_bytes.unwrap_or(defaults.max_request_bytes),
        cors_origins: api.cors_origins.clone(),
        max_streams_per_workspace: api
            .max_streams_per_workspace
            .unwrap_or(defaults.max_streams_per_workspace),
        require_membership: api.require_membership,
        metrics_token: api.metrics_token.clone(),
        public_url: api.public_url.clone(),
        allow_private_networks,
        definition_cache_bytes,
        api_key_cache: api
            .api_key_cache_secs
            .map_or(defaults.api_key_cache, Duration::from_secs),
    }
}

fn parse_ttl(text: &str) -> anyhow::Result<Duration> {
    let text = text.trim();
    let split = text.len().saturating_sub(1);
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .with_context(|| format!("--ttl `{text}`: expected a number followed by s, m, h or d"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => anyhow::bail!("--ttl `{text}`: expected a number followed by s, m, h or d"),
    };
    Ok(Duration::from_secs(secs))
}

fn token(workspace: &str, user: &str, ttl: &str) -> anyhow::Result<ExitCode> {
    let token = authenticator(&ApiSettings::from_env()?)?.mint(workspace, user, parse_ttl(ttl)?)?;
    println!("{token}");
    Ok(ExitCode::SUCCESS)
}

fn console_link(workspace: &str, user: &str, ttl: &str) -> anyhow::Result<ExitCode> {
    let ttl = parse_ttl(ttl)?;
    anyhow::ensure!(
        !ttl.is_zero() && ttl <= conveyor_api::auth::MAX_LINK_TTL,
        "--ttl: a sign-in link works for at most 1h"
    );
    let api = ApiSettings::from_env()?;
    let token = authenticator(&api)?.mint_link(workspace, user, ttl)?;
    println!(
        "{}",
        conveyor_api::console::link_url(&api.public_url, &token)
    );
    Ok(ExitCode::SUCCESS)
}

async fn admin(action: AdminAction) -> anyhow::Result<ExitCode> {
    let pool = Settings::pool_for(&settings::database_url()?, 2, "conveyor-api admin")?;
    match action {
        AdminAction::Add { user_id, role } => {
            let before =
                conveyor_engine::store::access::set_admin_role(&pool, &user_id, role).await?;
            println!(
                "{}",
                match before {
                    None => format!("{user_id} is now an admin ({role})"),
                    Some(before) if before == role => {
                        format!("{user_id} was already an admin ({role})")
                    }
                    Some(before) => format!("{user_id} is now an admin ({role}; was {before})"),
                }
            );
        }
        AdminAction::Remove { user_id } => {
            let removed = conveyor_engine::store::access::remove_admin(&pool, &user_id).await?;
            println!(
                "{}",
                if removed {
                    format!("{user_id} is no longer an admin")
                } else {
                    format!("{user_id} was not an admin")
                }
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn member(action: MemberAction) -> anyhow::Result<ExitCode> {
    use conveyor_engine::store::members;
    let pool = Settings::pool_for(&settings::database_url()?, 2, "conveyor-api member")?;
    match action {
        MemberAction::Add { workspace, user_id } => {
            let added = members::add(&pool, &workspace, &user_id, "cli").await?;
            let what = if added { "is now" } else { "was already" };
            println!("{user_id} {what} a member of {workspace}");
        }
        MemberAction::Remove { workspace, user_id } => {
            let removed = members::remove(&pool, &workspace, &user_id).await?;
            let what = if removed { "is no longer" } else { "was not" };
            println!("{user_id} {what} a member of {workspace}");
        }
        MemberAction::List { workspace } => {
            for m in members::list(&pool, &workspace).await? {
                println!("{}\t{}\t{}", m.user_id, m.added_by, m.added_at.to_rfc3339());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn parse_role(s: &str) -> Result<AdminRole, String> {
    s.parse()
        .map_err(|_| format!("`{s}` is not a role: expected viewer, operator or owner"))
}

fn validate(files: &[PathBuf]) -> ExitCode {
    let mut ok = true;
    for file in files {
        let name = file.display();
        let json = std::fs::read_to_string(file)
            .map_err(|e| format!("cannot read: {e}"))
            .and_then(|text| {
                serde_json::from_str::<serde_json::Value>(&text)
                    .map_err(|e| format!("invalid JSON: {e}"))
            });
        match json {
            Err(e) => {
                ok = false;
                eprintln!("{name}: {e}");
            }
            Ok(json) => match validate_json(&json) {
                Ok(kind) => println!("{name}: ok ({kind})"),
                Err(errors) => {
                    ok = false;
                    for e in errors.0 {
                        eprintln!("{name}: {e}");
                    }
                }
            },
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// A file with `slug` and `connector` keys is a template; anything else a
/// bare connector definition.
fn validate_json(
    json: &serde_json::Value,
) -> Result<&'static str, conveyor_engine::connector::ValidationErrors> {
    if json.get("slug").is_some() && json.get("connector").is_some() {
        conveyor_engine::marketplace::Template::parse(json).map(|_| "template")
    } else {
        conveyor_engine::connector::parse_and_validate(json).map(|_| "connector")
    }
}

fn jsonpath(query: &str) -> ExitCode {
    let mut input = String::new();
    if let Err(e) = std::io::stdin().read_to_string(&mut input) {
        eprintln!("error: cannot read stdin: {e}");
        return ExitCode::FAILURE;
    }
    let doc: serde_json::Value = match serde_json::from_str(&input) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: stdin is not valid JSON: {e}");
            return ExitCode::FAILURE;
        }
    };
    match conveyor_engine::extract::query_json(query, &doc) {
        Ok(nodes) => {
            println!("{nodes}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serve_args(args: &[&str]) -> Option<ServeArgs> {
        let cli = Cli::try_parse_from(args).ok()?;
        match cli.command {
            None => Some(cli.serve),
            Some(Command::Serve(a)) => Some(a),
            Some(_) => None,
        }
    }

    #[test]
    fn serve_is_the_default_command_with_its_options() {
        let two = Some(ServeArgs {
            embedded_workers: 2,
        });
        assert_eq!(
            serve_args(&["conveyor-api", "--embedded-workers", "2"]),
            two
        );
        assert_eq!(
            serve_args(&["conveyor-api", "serve", "--embedded-workers", "2"]),
            two
        );
        assert_eq!(
            serve_args(&["conveyor-api"]),
            Some(ServeArgs {
                embedded_workers: 0
            })
        );
        assert!(
            Cli::try_parse_from(["conveyor-api", "--embedded-workers", "2", "migrate"]).is_err()
        );
    }
}
