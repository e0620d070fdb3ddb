//! One OAuth refresh across processes: 50 executions in 4 `conveyor-worker`
//! processes all need the same expired token at once; the provider (the
//! harness's OAuth2 server, which rotates refresh tokens and refuses an
//! old one) sees exactly one refresh, every execution succeeds with the
//! new token, and no token reaches step history or the workers' logs.

use std::collections::BTreeMap;
use std::fs::File;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use conveyor_engine::connector;
use conveyor_engine::crypto::{Key, Keyring};
use conveyor_engine::oauth::CredentialKind;
use conveyor_engine::store::credentials::{self, NewCredential};
use conveyor_tests::oauth_server::{CLIENT_ID, CLIENT_SECRET, OAuthServer};
use conveyor_tests::{WS, connector_create, database_url, enqueue_many};
use serde_json::json;
use sqlx::PgPool;

const WORKER_BIN: &str = env!("CARGO_BIN_EXE_conveyor-worker");
const EXECUTIONS: u64 = 50;

/// A worker process whose log goes to a file; killed on drop.
struct WorkerProcess(Child);

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_worker(database_url: &str, key: &str, id: &str, log: &std::path::Path) -> WorkerProcess {
    let log = File::create(log).expect("log file");
    let child = Command::new(WORKER_BIN)
        .env("DATABASE_URL", database_url)
        .env("CONVEYOR_ENCRYPTION_KEY", key)
        .env("CONVEYOR_ALLOW_PRIVATE_NETWORKS", "true")
        .env("CONVEYOR_AUTO_MIGRATE", "false")
        .env("CONVEYOR_LEASE_SECS", "10")
        .env("CONVEYOR_POLL_INTERVAL_MS", "100")
        .env("CONVEYOR_WORKER_CONCURRENCY", "8")
        .env("CONVEYOR_DB_MAX_CONNECTIONS", "12")
        .env("CONVEYOR_WORKER_ID", id)
        .env("RUST_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("clone"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {WORKER_BIN}: {e}"));
    WorkerProcess(child)
}

async fn status_counts(pool: &PgPool) -> BTreeMap<String, i64> {
    sqlx::query_as::<_, (String, i64)>(
        "SELECT status, count(*) FROM connector_executions GROUP BY status",
    )
    .fetch_all(pool)
    .await
    .map(|rows| rows.into_iter().collect())
    .unwrap_or_default()
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn fifty_executions_in_four_processes_share_one_refresh(pool: PgPool) {
    let server = OAuthServer::start().await;
    // A slow token endpoint, so every process asks while the refresh runs.
    server.set_token_delay(Duration::from_millis(500));
    let key = Key::generate();
    let key_text = key.to_base64();
    let keyring = Arc::new(Keyring::new(key, []));
    let refresh = server.issue_refresh_token();
    let fields = BTreeMap::from([
        ("client_id".to_owned(), CLIENT_ID.to_owned()),
        ("client_secret".to_owned(), CLIENT_SECRET.to_owned()),
        ("refresh_token".to_owned(), refresh),
        ("access_token".to_owned(), "expired-access-token".to_owned()),
    ]);
    let new = NewCredential {
        kind: CredentialKind::AuthorizationCode,
        fields: &fields,
        oauth: Some(json!({"token_url": format!("{}/token", server.uri)})),
        status: "connected",
        status_reason: None,
    };
    credentials::put_kind(&pool, &keyring, WS, "crm", &new)
        .await
        .expect("credential");
    sqlx::query(
        "UPDATE workspace_api_credentials SET access_token_expires_at = now() - interval '1 second'",
    )
    .execute(&pool)
    .await
    .expect("expire");
    let definition = json!({"name": "OAuth fan-out", "steps": [
        {"name": "call", "method": "GET", "url": format!("{}/resource", server.uri),
         "auth": {"type": "oauth2", "credential": "crm"}}]});
    let c = connector::parse_and_validate(&definition).expect("valid");
    let (connector_id, connector_version) = connector_create(&pool, &c).await;
    enqueue_many(&pool, (connector_id, connector_version), EXECUTIONS).await;

    let url = database_url(&pool);
    let dir = std::env::temp_dir().join(format!("conveyor-oauth-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).expect("log dir");
    let logs: Vec<_> = (0..4)
        .map(|i| dir.join(format!("worker-{i}.log")))
        .collect();
    let workers: Vec<WorkerProcess> = logs
        .iter()
        .enumerate()
        .map(|(i, log)| start_worker(&url, &key_text, &format!("oauth-{i}"), log))
        .collect();

    let started = Instant::now();
    loop {
        let counts = status_counts(&pool).await;
        let get = |s: &str| counts.get(s).copied().unwrap_or(0);
        assert_eq!(get("failed"), 0, "executions failed: {counts:?}");
        if get("succeeded") == EXECUTIONS as i64 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "only {counts:?} after 90 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(workers);

    assert_eq!(server.count("refresh_token"), 1, "exactly one refresh");
    assert_eq!(
        server.old_refresh_uses(),
        0,
        "an old refresh token came back"
    );
    assert_eq!(
        server.resource_keys().len() as u64,
        EXECUTIONS,
        "one request each"
    );
    let workers_seen: i64 =
        sqlx::query_scalar("SELECT count(DISTINCT worker_id) FROM execution_steps")
            .fetch_one(&pool)
            .await
            .expect("workers");
    assert!(
        workers_seen >= 2,
        "the executions spread over the processes"
    );

    let mut secrets = server.issued_secrets();
    secrets.push(CLIENT_SECRET.to_owned());
    let stored: String = sqlx::query_scalar(
        "SELECT concat_ws(' ',
             (SELECT string_agg(s::text, ' ') FROM execution_steps s),
             (SELECT string_agg(e::text, ' ') FROM connector_executions e),
             (SELECT string_agg(v::text, ' ') FROM execution_events v))",
    )
    .fetch_one(&pool)
    .await
    .expect("dump");
    let mut logged = String::new();
    for log in &logs {
        logged.push_str(&std::fs::read_to_string(log).expect("read log"));
    }
    assert!(
        logged.contains("OAuth access token renewed"),
        "the refresh is logged"
    );
    for secret in &secrets {
        assert!(!stored.contains(secret.as_str()), "a token was stored");
        assert!(!logged.contains(secret.as_str()), "a token was logged");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
