//! The settings of both binaries, read from `CONVEYOR_*` variables and
//! `DATABASE_URL` in one place ([`Settings::from_env`]; the API's own
//! variables in [`ApiSettings::from_env`]). Every variable is documented in
//! README.md.

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, bail};
use axum::http::HeaderValue;
use conveyor_engine::crypto::{Key, Keyring};
use conveyor_engine::http::HttpConfig;
use conveyor_engine::runner::RunnerConfig;
use secrecy::{ExposeSecret, SecretString};

use crate::WorkerConfig;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Everything a Conveyor process needs to run executions.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `DATABASE_URL`.
    pub database_url: SecretString,
    /// `CONVEYOR_DB_MAX_CONNECTIONS`.
    pub db_max_connections: u32,
    /// `CONVEYOR_AUTO_MIGRATE`.
    pub auto_migrate: bool,
    /// `CONVEYOR_ENCRYPTION_KEY` (+ `CONVEYOR_OLD_ENCRYPTION_KEYS`).
    pub keyring: Keyring,
    /// Worker loop settings.
    pub worker: WorkerConfig,
    /// Step runner settings.
    pub runner: RunnerConfig,
    /// HTTP client settings.
    pub http: HttpConfig,
    /// Where `conveyor-worker` and `conveyor-api` serve `/metrics`, apart
    /// from the API (`CONVEYOR_METRICS_LISTEN`;
    /// `None`: not served).
    pub metrics_listen: Option<SocketAddr>,
    /// The API server's settings (used by `conveyor-api serve`).
    pub api: ApiSettings,
}

/// The API server's settings. Unset values are `None`: the API's own
/// defaults (`ApiConfig::default`) apply.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    /// `CONVEYOR_LISTEN` (default `127.0.0.1:8080`).
    pub listen: SocketAddr,
    /// `CONVEYOR_JWT_SECRET`: required to serve or mint tokens.
    pub jwt_secret: Option<SecretString>,
    /// `CONVEYOR_RATE_LIMIT_PER_SEC`.
    pub rate_limit_per_sec: Option<u32>,
    /// `CONVEYOR_MAX_REQUEST_BYTES`.
    pub max_request_bytes: Option<usize>,
    /// `CONVEYOR_CORS_ORIGINS`, comma-separated.
    pub cors_origins: Vec<HeaderValue>,
    /// `CONVEYOR_JWT_ISSUER`: the `iss` every token must carry (unset or
    /// empty: not checked).
    pub jwt_issuer: Option<String>,
    /// `CONVEYOR_JWT_AUDIENCE`: the `aud` every token must carry (unset or
    /// empty: not checked).
    pub jwt_audience: Option<String>,
    /// `CONVEYOR_JWT_MAX_LIFETIME_SECS`: the longest `exp - iat` accepted
    /// (`None`: the API's default).
    pub jwt_max_lifetime_secs: Option<u64>,
    /// `CONVEYOR_MAX_STREAMS_PER_WORKSPACE`: open event streams one
    /// workspace may hold on one API process.
    pub max_streams_per_workspace: Option<usize>,
    /// `CONVEYOR_REQUIRE_MEMBERSHIP`: refuse user tokens whose user is not
    /// listed as a member of the token's workspace (default false).
    pub require_membership: bool,
    /// `CONVEYOR_METRICS_TOKEN`: serve `/metrics` on the API's own port to
    /// requests bearing it (unset: only on `CONVEYOR_METRICS_LISTEN`).
    pub metrics_token: Option<SecretString>,
    /// `CONVEYOR_PUBLIC_URL` (default `http://127.0.0.1:8080`): where
    /// people reach the API; OAuth providers redirect to it.
    pub public_url: String,
    /// `CONVEYOR_API_KEY_CACHE_SECS`: how long a looked-up API key is
    /// kept (`None`: the API's default; 0 keeps none).
    pub api_key_cache_secs: Option<u64>,
}

impl ApiSettings {
    /// Reads the API's variables alone (commands that need nothing else).
    ///
    /// # Errors
    ///
    /// An unparsable value; the message names the variable.
    pub fn from_env() -> anyhow::Result<Self> {
        let mut cors_origins = Vec::new();
        if let Some(list) = var("CONVEYOR_CORS_ORIGINS")? {
            for origin in list.split(',').map(str::trim).filter(|o| !o.is_empty()) {
                cors_origins.push(origin.parse().with_context(|| {
                    format!("CONVEYOR_CORS_ORIGINS: invalid origin `{origin}`")
                })?);
            }
        }
        Ok(Self {
            listen: parse("CONVEYOR_LISTEN", SocketAddr::from(([127, 0, 0, 1], 8080)))?,
            jwt_secret: var("CONVEYOR_JWT_SECRET")?.map(SecretString::from),
            rate_limit_per_sec: parse_opt("CONVEYOR_RATE_LIMIT_PER_SEC")?,
            max_request_bytes: parse_opt("CONVEYOR_MAX_REQUEST_BYTES")?,
            cors_origins,
            jwt_issuer: var("CONVEYOR_JWT_ISSUER")?.filter(|v| !v.is_empty()),
            jwt_audience: var("CONVEYOR_JWT_AUDIENCE")?.filter(|v| !v.is_empty()),
            jwt_max_lifetime_secs: parse_opt("CONVEYOR_JWT_MAX_LIFETIME_SECS")?,
            max_streams_per_workspace: parse_opt("CONVEYOR_MAX_STREAMS_PER_WORKSPACE")?,
            require_membership: parse("CONVEYOR_REQUIRE_MEMBERSHIP", false)?,
            metrics_token: var("CONVEYOR_METRICS_TOKEN")?.map(SecretString::from),
            public_url: public_url_setting()?,
            api_key_cache_secs: parse_opt("CONVEYOR_API_KEY_CACHE_SECS")?,
        })
    }

    /// The JWT secret.
    ///
    /// # Errors
    ///
    /// When `CONVEYOR_JWT_SECRET` is unset.
    pub fn jwt_secret(&self) -> anyhow::Result<&SecretString> {
        self.jwt_secret
            .as_ref()
            .context("CONVEYOR_JWT_SECRET is not set: it must be at least 32 bytes")
    }
}

/// `CONVEYOR_PUBLIC_URL` (default `http://127.0.0.1:8080`), checked by
/// [`public_url`].
///
/// # Errors
///
/// An invalid value.
fn public_url_setting() -> anyhow::Result<String> {
    match var("CONVEYOR_PUBLIC_URL")? {
        None => Ok("http://127.0.0.1:8080".to_owned()),
        Some(text) => public_url(&text),
    }
}

/// A `CONVEYOR_PUBLIC_URL` value: an absolute `http` or `https` URL with
/// no query or fragment, returned without a trailing slash.
///
/// # Errors
///
/// Any other value; the message names the variable.
pub fn public_url(text: &str) -> anyhow::Result<String> {
    let text = text.trim().trim_end_matches('/');
    let valid = url::Url::parse(text).is_ok_and(|u| {
        matches!(u.scheme(), "http" | "https")
            && u.has_host()
            && u.query().is_none()
            && u.fragment().is_none()
    });
    if !valid {
        bail!(
            "CONVEYOR_PUBLIC_URL: `{text}` is not an absolute http(s) URL without query or fragment"
        );
    }
    Ok(text.to_owned())
}

/// Reads an optional variable.
///
/// # Errors
///
/// When it is set but not valid Unicode.
pub fn var(name: &str) -> anyhow::Result<Option<String>> {
    match std::env::var(name) {
        Ok(v) if v.trim().is_empty() => Ok(None),
        Ok(v) => Ok(Some(v)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(e) => Err(e).with_context(|| format!("{name} is not valid Unicode")),
    }
}

/// Reads and parses a variable, with a default.
///
/// # Errors
///
/// When it is set but does not parse; the message names the variable.
pub fn parse<T>(name: &str, default: T) -> anyhow::Result<T>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    match var(name)? {
        None => Ok(default),
        Some(v) => v
            .trim()
            .parse()
            .map_err(|e| anyhow::anyhow!("{name}: invalid value `{v}`: {e}")),
    }
}

/// Reads and parses an optional variable.
///
/// # Errors
///
/// When it is set but does not parse; the message names the variable.
pub fn parse_opt<T>(name: &str) -> anyhow::Result<Option<T>>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    var(name)?
        .map(|v| {
            v.trim()
                .parse()
                .map_err(|e| anyhow::anyhow!("{name}: invalid value `{v}`: {e}"))
        })
        .transpose()
}

/// Reads a boolean variable (`true`/`false`, `1`/`0`, `yes`/`no`).
///
/// # Errors
///
/// When it is set to anything else.
pub fn flag(name: &str, default: bool) -> anyhow::Result<bool> {
    match var(name)?.map(|v| v.trim().to_ascii_lowercase()) {
        None => Ok(default),
        Some(v) if matches!(v.as_str(), "true" | "1" | "yes" | "on") => Ok(true),
        Some(v) if matches!(v.as_str(), "false" | "0" | "no" | "off") => Ok(false),
        Some(v) => bail!("{name}: invalid value `{v}`: expected true or false"),
    }
}

/// The log format from `CONVEYOR_LOG_FORMAT` (`text`, the default, or
/// `json`).
///
/// # Errors
///
/// On any other value.
pub fn log_format() -> anyhow::Result<LogFormat> {
    match var("CONVEYOR_LOG_FORMAT")?.as_deref().map(str::trim) {
        None | Some("text") => Ok(LogFormat::Text),
        Some("json") => Ok(LogFormat::Json),
        Some(other) => bail!("CONVEYOR_LOG_FORMAT: invalid value `{other}`: expected text or json"),
    }
}

/// The database URL alone (for commands that need nothing else).
///
/// # Errors
///
/// When `DATABASE_URL` is unset.
pub fn database_url() -> anyhow::Result<SecretString> {
    var("DATABASE_URL")?.map(SecretString::from).context(
        "DATABASE_URL is not set: point it at a PostgreSQL database (scripts/dev prints one)",
    )
}

/// The keyring from `CONVEYOR_ENCRYPTION_KEY` (base64 of 32 bytes) and the
/// optional comma-separated `CONVEYOR_OLD_ENCRYPTION_KEYS`.
///
/// # Errors
///
/// When the key is missing or malformed: the binaries refuse to start
/// rather than invent one.
pub fn keyring() -> anyhow::Result<Keyring> {
    let current = var("CONVEYOR_ENCRYPTION_KEY")?.context(
        "CONVEYOR_ENCRYPTION_KEY is not set: it must be 32 random bytes in base64 \
         (generate one with `conveyor-api generate-key`)",
    )?;
    let current = Key::from_base64(current.trim()).context("CONVEYOR_ENCRYPTION_KEY")?;
    let mut old = Vec::new();
    if let Some(list) = var("CONVEYOR_OLD_ENCRYPTION_KEYS")? {
        for (i, k) in list
            .split(',')
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .enumerate()
        {
            old.push(
                Key::from_base64(k)
                    .with_context(|| format!("CONVEYOR_OLD_ENCRYPTION_KEYS: key #{}", i + 1))?,
            );
        }
    }
    Ok(Keyring::new(current, old))
}

impl Settings {
    /// Reads every setting, failing on the first invalid one.
    ///
    /// # Errors
    ///
    /// A missing `DATABASE_URL` or encryption key, or an unparsable value.
    pub fn from_env() -> anyhow::Result<Self> {
        let defaults = WorkerConfig::default();
        let metrics_listen: Option<SocketAddr> = parse_opt("CONVEYOR_METRICS_LISTEN")?;
        let retention_days = defaults.retention.map_or(0, |r| r.as_secs() / 86_400);
        let worker = WorkerConfig {
            worker_id: var("CONVEYOR_WORKER_ID")?.unwrap_or_else(crate::default_worker_id),
            concurrency: parse("CONVEYOR_WORKER_CONCURRENCY", defaults.concurrency)?,
            lease: Duration::from_secs(parse("CONVEYOR_LEASE_SECS", defaults.lease.as_secs())?),
            poll_interval: Duration::from_millis(parse(
                "CONVEYOR_POLL_INTERVAL_MS",
                u64::try_from(defaults.poll_interval.as_millis()).unwrap_or(1000),
            )?),
            shutdown_grace: Duration::from_secs(parse(
                "CONVEYOR_SHUTDOWN_GRACE_SECS",
                defaults.shutdown_grace.as_secs(),
            )?),
            max_reclaims: parse("CONVEYOR_MAX_RECLAIMS", defaults.max_reclaims)?,
            claim_batch: parse("CONVEYOR_CLAIM_BATCH", defaults.claim_batch)?,
            claim_cooldown: Duration::from_millis(parse(
                "CONVEYOR_CLAIM_COOLDOWN_MS",
                u64::try_from(defaults.claim_cooldown.as_millis()).unwrap_or(5),
            )?),
            retention: match parse::<u64>("CONVEYOR_RETENTION_DAYS", retention_days)? {
                0 => None,
                days => Some(Duration::from_secs(days.saturating_mul(86_400))),
            },
            delivery_retention: match parse::<u64>(
                "CONVEYOR_DELIVERY_RETENTION_DAYS",
                defaults
                    .delivery_retention
                    .map_or(0, |r| r.as_secs() / 86_400),
            )? {
                0 => None,
                days => Some(Duration::from_secs(days.saturating_mul(86_400))),
            },
            observe_queue: metrics_listen.is_some(),
            scheduler: flag("CONVEYOR_SCHEDULER", defaults.scheduler)?,
            workspace_max_running: parse(
                "CONVEYOR_WORKSPACE_MAX_RUNNING",
                defaults.workspace_max_running,
            )?,
        };
        if worker.concurrency == 0 {
            bail!("CONVEYOR_WORKER_CONCURRENCY must be at least 1");
        }
        if worker.lease < Duration::from_secs(3) {
            bail!("CONVEYOR_LEASE_SECS must be at least 3");
        }
        if worker.poll_interval.is_zero() {
            bail!("CONVEYOR_POLL_INTERVAL_MS must be at least 1");
        }
        if worker.claim_batch == 0 {
            bail!("CONVEYOR_CLAIM_BATCH must be at least 1");
        }
        if worker.workspace_max_running < 1 {
            bail!("CONVEYOR_WORKSPACE_MAX_RUNNING must be at least 1");
        }
        // Durations become timestamps (`now + lease`): a huge value would
        // overflow them and panic a task, so each has a sane ceiling.
        let day = Duration::from_secs(86_400);
        for (name, value, max) in [
            ("CONVEYOR_LEASE_SECS", worker.lease, day),
            ("CONVEYOR_POLL_INTERVAL_MS", worker.poll_interval, day),
            ("CONVEYOR_CLAIM_COOLDOWN_MS", worker.claim_cooldown, day),
            ("CONVEYOR_SHUTDOWN_GRACE_SECS", worker.shutdown_grace, day),
            (
                "CONVEYOR_RETENTION_DAYS",
                worker.retention.unwrap_or_default(),
                day * 36_500,
            ),
            (
                "CONVEYOR_DELIVERY_RETENTION_DAYS",
                worker.delivery_retention.unwrap_or_default(),
                day * 36_500,
            ),
        ] {
            if value > max {
                bail!("{name} is too large: at most {} seconds", max.as_secs());
            }
        }
        let http_defaults = HttpConfig::default();
        let http = HttpConfig {
            allow_private_networks: flag("CONVEYOR_ALLOW_PRIVATE_NETWORKS", false)?,
            max_response_bytes: parse(
                "CONVEYOR_MAX_RESPONSE_BYTES",
                http_defaults.max_response_bytes,
            )?,
            max_stored_body_bytes: parse(
                "CONVEYOR_MAX_STORED_BODY_BYTES",
                http_defaults.max_stored_body_bytes,
            )?,
            max_parsed_body_bytes: parse(
                "CONVEYOR_MAX_PARSED_BODY_BYTES",
                http_defaults.max_parsed_body_bytes,
            )?,
            max_request_bytes: http_defaults.max_request_bytes,
            user_agent: http_defaults.user_agent,
        };
        let runner_defaults = RunnerConfig::default();
        let runner = RunnerConfig {
            worker_id: worker.worker_id.clone(),
            lease: worker.lease,
            max_context_bytes: parse(
                "CONVEYOR_MAX_CONTEXT_BYTES",
                runner_defaults.max_context_bytes,
            )?,
            max_retry_after: Duration::from_secs(parse(
                "CONVEYOR_MAX_RETRY_AFTER_SECS",
                runner_defaults.max_retry_after.as_secs(),
            )?),
            metrics_workspace_labels: flag("CONVEYOR_METRICS_WORKSPACE_LABELS", false)?,
            definition_cache_bytes: parse(
                "CONVEYOR_DEFINITION_CACHE_BYTES",
                runner_defaults.definition_cache_bytes,
            )?,
            oauth_refresh_margin: Duration::from_secs(parse(
                "CONVEYOR_OAUTH_REFRESH_MARGIN_SECS",
                runner_defaults.oauth_refresh_margin.as_secs(),
            )?),
        };
        if runner.oauth_refresh_margin > Duration::from_secs(86_400) {
            bail!("CONVEYOR_OAUTH_REFRESH_MARGIN_SECS must be at most 86400");
        }
        if runner.max_retry_after > Duration::from_secs(86_400) {
            bail!("CONVEYOR_MAX_RETRY_AFTER_SECS must be at most 86400");
        }
        Ok(Self {
            database_url: database_url()?,
            db_max_connections: parse("CONVEYOR_DB_MAX_CONNECTIONS", 20)?,
            auto_migrate: flag("CONVEYOR_AUTO_MIGRATE", true)?,
            keyring: keyring()?,
            worker,
            runner,
            http,
            metrics_listen,
            api: ApiSettings::from_env()?,
        })
    }

    /// Connects the pool of the process `application_name` names. The URL
    /// never appears in errors or logs.
    ///
    /// # Errors
    ///
    /// An unparsable URL.
    pub fn pool(&self, application_name: &str) -> anyhow::Result<sqlx::PgPool> {
        Self::pool_for(
            &self.database_url,
            self.db_max_connections,
            application_name,
        )
    }

    /// A lazily connecting pool for `url`. Its sessions carry
    /// `application_name` (what `pg_stat_activity` and PostgreSQL's log
    /// show of them) unless the URL's `application_name` or `PGAPPNAME`
    /// sets one.
    ///
    /// # Errors
    ///
    /// An unparsable URL.
    pub fn pool_for(
        url: &SecretString,
        max_connections: u32,
        application_name: &str,
    ) -> anyhow::Result<sqlx::PgPool> {
        let mut options: sqlx::postgres::PgConnectOptions = url
            .expose_secret()
            .parse()
            .map_err(|_| anyhow::anyhow!("DATABASE_URL is not a valid PostgreSQL URL"))?;
        if options.get_application_name().is_none() {
            options = options.application_name(application_name);
        }
        Ok(
            conveyor_engine::store::tested_when_idle(sqlx::postgres::PgPoolOptions::new())
                .max_connections(max_connections)
                .acquire_timeout(Duration::from_secs(5))
                .connect_lazy_with(options),
        )
    }
}

/// Applies pending migrations (sqlx's migrator takes an advisory lock, so
/// several processes starting together are safe), waiting for the database
/// to come up for up to a minute, then syncs the official templates.
///
/// # Errors
///
/// The database stays unreachable, or a migration fails.
pub async fn migrate(pool: &sqlx::PgPool) -> anyhow::Result<()> {
    let mut wait = Duration::from_millis(200);
    let started = std::time::Instant::now();
    loop {
        let e = match conveyor_engine::MIGRATOR.run(pool).await {
            Ok(()) => return sync_templates(pool).await,
            Err(e) => conveyor_engine::Error::Migrate(e),
        };
        if !e.is_connection() || started.elapsed() >= Duration::from_secs(60) {
            return Err(e).context("applying migrations");
        }
        tracing::warn!("database not reachable yet; retrying migrations");
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(5));
    }
}

/// Syncs the official templates shipped in the binary into the
/// marketplace (new ones inserted, newer versions added, nothing deleted).
///
/// # Errors
///
/// A shipped template that does not parse, or a database error.
pub async fn sync_templates(pool: &sqlx::PgPool) -> anyhow::Result<()> {
    let templates = conveyor_engine::marketplace::official().map_err(anyhow::Error::msg)?;
    let report = conveyor_engine::store::templates::sync_official(pool, &templates)
        .await
        .context("syncing official templates")?;
    tracing::info!(
        official = templates.len(),
        inserted = report.inserted,
        updated = report.updated,
        "official templates synced"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::public_url;

    #[test]
    fn public_urls_are_absolute_web_urls_without_a_trailing_slash() {
        assert_eq!(
            public_url(" https://conveyor.example.com/ ").expect("https"),
            "https://conveyor.example.com"
        );
        assert_eq!(
            public_url("http://127.0.0.1:8080").expect("http"),
            "http://127.0.0.1:8080"
        );
        for bad in [
            "conveyor.example.com",
            "ftp://conveyor.example.com",
            "https://",
            "https://conveyor.example.com/?a=1",
            "https://conveyor.example.com/#x",
        ] {
            let e = public_url(bad).expect_err(bad).to_string();
            assert!(e.contains("CONVEYOR_PUBLIC_URL"), "{e}");
        }
    }
}
