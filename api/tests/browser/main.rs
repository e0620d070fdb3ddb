//! The web console in a real Chromium (Debian's `chromium` driven through
//! `chromedriver`, both installed by `scripts/test`), against the real API
//! on a loopback port, a real worker, a real PostgreSQL and loopback stub
//! servers. One browser session walks what a person does, asserting on
//! what the page shows: sign in, save a credential, install a template
//! through its form, run it and watch the page turn `succeeded` without a
//! reload, read the redacted request of a failed execution, see a
//! validation error at its field, cancel a running execution, and review
//! a community template as an admin. Another connects an OAuth credential
//! through the loopback test OAuth server and comes back connected (the
//! console's CSP, `form-action 'self'`, must not stop the browser on its
//! way to the provider).
//!
//! With `CONVEYOR_CONSOLE_SCREENSHOTS=<dir>` it also saves screenshots of
//! the main pages there (`scripts/console-screenshots` writes
//! `docs/console/`).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use conveyor_api::auth::Authenticator;
use conveyor_api::{ApiConfig, AppState, app};
use conveyor_engine::crypto::{Key, Keyring};
use conveyor_tests::api::JWT_SECRET;
use conveyor_tests::oauth_server::{CLIENT_ID, CLIENT_SECRET, OAuthServer};
use serde_json::{Value, json};
use sqlx::PgPool;
use thirtyfour::prelude::*;
use tokio_util::sync::CancellationToken;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// How long a page may take to show what a step expects.
const PATIENCE: Duration = Duration::from_secs(30);
/// A secret the pages must never show.
const SECRET: &str = "br0wser-s3cret-91c2";

/// `chromedriver` on a free loopback port, stopped when dropped.
struct Driver {
    child: Child,
    port: u16,
    profile: PathBuf,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn start_driver() -> Driver {
    let port = free_port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver is installed (scripts/test installs Debian's chromium and chromium-driver)");
    let profile = std::env::temp_dir().join(format!("conveyor-chromium-{}", uuid::Uuid::now_v7()));
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(started.elapsed() < PATIENCE, "chromedriver did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Driver {
        child,
        port,
        profile,
    }
}

async fn open_browser(driver: &Driver) -> WebDriver {
    let mut caps = DesiredCapabilities::chrome();
    for arg in [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-dev-shm-usage",
        "--window-size=1280,900",
        &format!("--user-data-dir={}", driver.profile.display()),
    ] {
        caps.add_arg(arg).expect("argument");
    }
    if std::path::Path::new("/usr/bin/chromium").exists() {
        caps.set_binary("/usr/bin/chromium").expect("binary");
    }
    WebDriver::new(format!("http://127.0.0.1:{}", driver.port), caps)
        .await
        .expect("a Chromium session")
}

/// The API on a loopback port with an embedded worker; its public URL is
/// that port (the OAuth redirect URI), and token endpoints may be on
/// loopback (the test OAuth server).
async fn serve(pool: &PgPool) -> (SocketAddr, Authenticator, CancellationToken) {
    let keyring = Arc::new(Keyring::new(Key::generate(), []));
    let auth = Authenticator::new(JWT_SECRET).expect("secret");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    let config = ApiConfig {
        rate_limit_per_sec: 0,
        public_url: format!("http://{address}"),
        allow_private_networks: true,
        ..ApiConfig::default()
    };
    let state = AppState::new(pool.clone(), keyring.clone(), auth.clone(), config, None);
    tokio::spawn(
        state
            .events
            .clone()
            .listen(pool.clone(), std::future::pending()),
    );
    tokio::spawn(async move { axum::serve(listener, app(state)).await });
    let stop = CancellationToken::new();
    let worker = conveyor_tests::worker(pool, &keyring, conveyor_tests::test_worker_config("b"));
    tokio::spawn(worker.run(stop.clone()));
    (address, auth, stop)
}

/// Where screenshots go, when asked for.
fn screenshot_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("CONVEYOR_CONSOLE_SCREENSHOTS")?;
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(dir);
    std::fs::create_dir_all(&dir).expect("screenshot directory");
    Some(dir)
}

async fn snap(browser: &WebDriver, name: &str) {
    if let Some(dir) = screenshot_dir() {
        browser
            .screenshot(&dir.join(format!("{name}.png")))
            .await
            .expect("screenshot");
    }
}

/// The text of the element `by` once `check` accepts it (the element may
/// be replaced meanwhile, as live regions are).
async fn wait_for(browser: &WebDriver, by: By, what: &str, check: impl Fn(&str) -> bool) -> String {
    let started = Instant::now();
    let mut last = String::new();
    loop {
        if let Ok(element) = browser.find(by.clone()).await
            && let Ok(text) = element.text().await
        {
            if check(&text) {
                return text;
            }
            last = text;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "{what}: still `{last}` after {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn fill(browser: &WebDriver, css: &str, text: &str) {
    let field = browser.find(By::Css(css)).await.expect(css);
    field.clear().await.expect("clear");
    field.send_keys(text).await.expect("type");
}

/// Clicks the element `css`, finding it again when a live region replaced
/// it between the find and the click.
async fn click(browser: &WebDriver, css: &str) {
    let started = Instant::now();
    loop {
        let clicked = match browser.find(By::Css(css)).await {
            Ok(element) => element.click().await,
            Err(e) => Err(e),
        };
        match clicked {
            Ok(()) => return,
            Err(e) => assert!(started.elapsed() < PATIENCE, "click {css}: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn page_text(browser: &WebDriver) -> String {
    browser
        .find(By::Tag("main"))
        .await
        .expect("main")
        .text()
        .await
        .expect("text")
}

/// Waits until the page's script has opened its live stream.
async fn wait_live(browser: &WebDriver) {
    let started = Instant::now();
    loop {
        let state: Value = browser
            .execute(
                "return document.documentElement.dataset.live || null;",
                Vec::new(),
            )
            .await
            .expect("read the live state")
            .json()
            .clone();
        if state == json!("open") {
            return;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "the live stream did not open: {state}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Marks the document so a reload would be noticed.
async fn mark(browser: &WebDriver) {
    browser
        .execute("window.conveyorMark = 'unchanged';", Vec::new())
        .await
        .expect("mark");
}

async fn still_marked(browser: &WebDriver) -> bool {
    let value: Value = browser
        .execute("return window.conveyorMark || null;", Vec::new())
        .await
        .expect("read mark")
        .json()
        .clone();
    value == json!("unchanged")
}

fn echo_template(base_url: &str) -> Value {
    json!({
        "slug": "echo", "name": "Echo", "description": "Posts a greeting to the echo API.",
        "category": "developer-tools", "provider": "echo", "docs_url": "https://echo.example.com/docs",
        "version": "1.0.0",
        "credentials": [{"name": "echo", "auth": "bearer", "fields": ["token"], "hint": "Any token"}],
        "settings": [{"name": "base_url", "description": "API root", "default": base_url},
                     {"name": "greeting", "description": "What to say"}],
        "connector": {"name": "Echo", "steps": [{"name": "say", "method": "POST",
            "url": "<<settings.base_url>>/say", "auth": {"type": "bearer", "credential": "echo"},
            "body": {"type": "json", "content": {"text": "<<settings.greeting>>"}},
            "extract": {"id": "$.id"}}],
            "output": {"id": "<<steps.say.extract.id>>"}}
    })
}

async fn api_call(
    base: &str,
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: Value,
) -> Value {
    let reply = reqwest::Client::new()
        .request(method, format!("{base}/api/v1{path}"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .expect("API call");
    let status = reply.status();
    let body: Value = reply.json().await.unwrap_or(Value::Null);
    assert!(status.is_success(), "{path}: {status} {body}");
    body
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn a_person_uses_the_console_in_chromium(pool: PgPool) {
    let stub = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/say"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"id": "msg-1"}))
                .set_delay(Duration::from_millis(1500)),
        )
        .mount(&stub)
        .await;
    Mock::given(path("/fail"))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({"error": "no such channel"})))
        .mount(&stub)
        .await;
    Mock::given(path("/slow"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(3)))
        .mount(&stub)
        .await;
    conveyor_engine::store::access::add_admin(&pool, "ada")
        .await
        .expect("admin");
    let (address, auth, stop) = serve(&pool).await;
    let base = format!("http://{address}");
    let token = auth
        .mint("ws_demo", "ada", Duration::from_secs(600))
        .expect("token");
    api_call(
        &base,
        &token,
        reqwest::Method::POST,
        "/admin/templates",
        echo_template(&stub.uri()),
    )
    .await;

    let driver = start_driver();
    let browser = open_browser(&driver).await;
    let outcome = walk(&browser, &base, &token, &stub.uri()).await;
    browser.quit().await.expect("quit");
    stop.cancel();
    drop(driver);
    outcome.expect("the walk");
}

/// Signs in on the sign-in page by pasting `token`.
async fn sign_in(browser: &WebDriver, token: &str) {
    wait_for(browser, By::Tag("h1"), "sign-in page", |t| {
        t == "Conveyor console"
    })
    .await;
    fill(browser, "#token", token).await;
    click(browser, "form button[type=submit]").await;
    wait_for(browser, By::Tag("h1"), "executions page", |t| {
        t == "Executions"
    })
    .await;
}

/// The walk itself; WebDriver errors end it.
async fn walk(browser: &WebDriver, base: &str, token: &str, stub: &str) -> WebDriverResult<()> {
    // Signing in.
    browser.goto(format!("{base}/console")).await?;
    wait_for(browser, By::Tag("h1"), "sign-in page", |t| {
        t == "Conveyor console"
    })
    .await;
    snap(browser, "login").await;
    sign_in(browser, token).await;
    assert!(page_text(browser).await.contains("No executions match."));

    // A credential through the bearer form; its value never shows again.
    browser.goto(format!("{base}/console/credentials")).await?;
    fill(browser, "#bearer-name", "echo").await;
    fill(browser, "#bearer-token", SECRET).await;
    click(browser, "form[aria-label='Bearer token'] button").await;
    let table = wait_for(browser, By::Css("table tbody"), "credential row", |t| {
        t.contains("echo")
    })
    .await;
    assert!(
        table.contains("bearer") && table.contains("token"),
        "{table}"
    );
    assert!(!browser.source().await?.contains(SECRET));
    snap(browser, "credentials").await;

    // Installing a template through its form: the API's 422 drives it.
    browser.goto(format!("{base}/console/marketplace")).await?;
    fill(browser, "input[name=q]", "greeting").await;
    click(browser, "form[role=search] button").await;
    wait_for(browser, By::Css("table tbody"), "search result", |t| {
        t.contains("Echo")
    })
    .await;
    snap(browser, "marketplace").await;
    browser.find(By::LinkText("Echo")).await?.click().await?;
    wait_for(browser, By::Tag("h1"), "template page", |t| t == "Echo").await;
    click(browser, "form[action$='/install'] button").await;
    let problems = wait_for(
        browser,
        By::Id("install-problems"),
        "install problems",
        |t| t.contains("settings.greeting"),
    )
    .await;
    assert!(
        !problems.contains("credentials.echo"),
        "the form suggested the credential: {problems}"
    );
    fill(browser, "#setting-greeting", "hello from the console").await;
    snap(browser, "template").await;
    click(browser, "form[action$='/install'] button").await;
    wait_for(browser, By::Tag("h1"), "connector page", |t| {
        t.starts_with("Echo")
    })
    .await;
    assert!(page_text(browser).await.contains("Installed from echo"));
    let connector_url = browser.current_url().await?.to_string();

    // Running it: the page follows the stream and turns `succeeded`.
    click(browser, "form[action$='/run'] button").await;
    let status = wait_for(browser, By::Id("status"), "new execution", |t| {
        !t.is_empty()
    })
    .await;
    assert!(["QUEUED", "RUNNING"].contains(&status.as_str()), "{status}");
    mark(browser).await;
    wait_for(browser, By::Id("status"), "live status", |t| {
        t == "SUCCEEDED"
    })
    .await;
    assert!(still_marked(browser).await, "the page was reloaded");
    let text = page_text(browser).await;
    assert!(text.contains("msg-1") && text.contains("ada"), "{text}");
    snap(browser, "execution").await;

    // A validation error shown at its field.
    browser.goto(connector_url.clone()).await?;
    let invalid =
        r#"{"name": "Echo", "steps": [{"name": "say", "method": "POST", "url": "not a url"}]}"#;
    fill(browser, "#definition", invalid).await;
    browser
        .find(By::XPath(
            "//textarea[@id='definition']/ancestor::form//button",
        ))
        .await?
        .click()
        .await?;
    let path = wait_for(
        browser,
        By::Css("#definition-problems .path"),
        "problem path",
        |t| !t.is_empty(),
    )
    .await;
    assert_eq!(path, "steps[0].url");
    assert_eq!(
        browser
            .find(By::Id("definition"))
            .await?
            .attr("aria-invalid")
            .await?
            .as_deref(),
        Some("true")
    );
    snap(browser, "connector").await;

    // A second version, and the diff between the two.
    browser.goto(connector_url.clone()).await?;
    let current: Value = browser
        .execute(
            "return document.getElementById('definition').value;",
            Vec::new(),
        )
        .await?
        .json()
        .clone();
    let mut definition: Value =
        serde_json::from_str(current.as_str().unwrap_or_default()).expect("the editor holds JSON");
    definition["steps"][0]["timeout_ms"] = json!(10_000);
    fill(browser, "#definition", &definition.to_string()).await;
    browser
        .find(By::XPath(
            "//textarea[@id='definition']/ancestor::form//button",
        ))
        .await?
        .click()
        .await?;
    wait_for(browser, By::Tag("h1"), "second version", |t| {
        t.contains("v2")
    })
    .await;
    click(browser, "form[aria-label='Compare versions'] button").await;
    wait_for(browser, By::Css("#diff h2"), "diff", |t| {
        t == "Changes from v1 to v2"
    })
    .await;
    let added = wait_for(browser, By::Css("#diff tr.added"), "added line", |t| {
        !t.is_empty()
    })
    .await;
    assert!(added.contains("\"timeout_ms\": 10000"), "{added}");
    snap(browser, "connector-diff").await;

    // A failed execution shows the stored request, redacted.
    let failing = api_call(
        base,
        token,
        reqwest::Method::POST,
        "/connectors",
        json!({
            "name": "Notify", "retry": {"max_attempts": 1},
            "steps": [{"name": "notify", "method": "POST", "url": format!("{stub}/fail"),
                       "auth": {"type": "bearer", "credential": "echo"},
                       "body": {"type": "json", "content": {"channel": "#nowhere"}}}]
        }),
    )
    .await;
    let failing_id = failing["id"].as_str().unwrap_or_default();
    browser
        .goto(format!("{base}/console/connectors/{failing_id}"))
        .await?;
    click(browser, "form[action$='/run'] button").await;
    wait_for(browser, By::Id("status"), "failure", |t| t == "FAILED").await;
    browser
        .find(By::Css("details.attempt summary"))
        .await?
        .click()
        .await?;
    let request = wait_for(browser, By::Css("details.attempt pre"), "request", |t| {
        t.to_lowercase().contains("authorization")
    })
    .await;
    assert!(request.contains("[REDACTED]"), "{request}");
    assert!(request.contains("#nowhere"), "{request}");
    assert!(!browser.source().await?.contains(SECRET));
    snap(browser, "execution-failed").await;

    // Cancelling a running execution.
    let slow = api_call(
        base,
        token,
        reqwest::Method::POST,
        "/connectors",
        json!({
            // Four slow steps: a cancel that a loaded machine delivers a
            // few seconds late still lands before the last one.
            "name": "Slow", "steps": [
                {"name": "first", "method": "GET", "url": format!("{stub}/slow")},
                {"name": "second", "method": "GET", "url": format!("{stub}/slow")},
                {"name": "third", "method": "GET", "url": format!("{stub}/slow")},
                {"name": "fourth", "method": "GET", "url": format!("{stub}/slow")}]
        }),
    )
    .await;
    let slow_id = slow["id"].as_str().unwrap_or_default();
    browser
        .goto(format!("{base}/console/connectors/{slow_id}"))
        .await?;
    click(browser, "form[action$='/run'] button").await;
    wait_for(browser, By::Id("status"), "running", |t| t == "RUNNING").await;
    click(browser, "form[action$='/cancel'] button").await;
    wait_for(browser, By::Id("status"), "cancelled", |t| t == "CANCELLED").await;

    // The lists.
    browser.goto(format!("{base}/console")).await?;
    let rows = wait_for(browser, By::Css("table tbody"), "executions", |t| {
        t.contains("CANCELLED")
    })
    .await;
    assert!(
        rows.contains("SUCCEEDED") && rows.contains("FAILED"),
        "{rows}"
    );
    snap(browser, "executions").await;

    // The open list follows the workspace's stream: an execution started
    // through the API appears, and its status changes, without a reload.
    wait_live(browser).await;
    mark(browser).await;
    let echo_id = connector_url.rsplit('/').next().unwrap_or_default();
    let started = api_call(
        base,
        token,
        reqwest::Method::POST,
        &format!("/connectors/{echo_id}/execute"),
        json!({"input": {}}),
    )
    .await;
    let id = started["id"].as_str().unwrap_or_default();
    let short = &id[id.len() - 8..];
    let status = By::XPath(format!(
        "//tr[.//code[text()='{short}']]//span[contains(@class, 'status')]"
    ));
    let first = wait_for(browser, status.clone(), "new execution listed", |t| {
        !t.is_empty()
    })
    .await;
    assert!(
        first != "SUCCEEDED",
        "the first sight should be before the end: {first}"
    );
    wait_for(browser, status, "listed status turns succeeded", |t| {
        t == "SUCCEEDED"
    })
    .await;
    assert!(still_marked(browser).await, "the list was reloaded");
    browser.goto(format!("{base}/console/connectors")).await?;
    let rows = wait_for(browser, By::Css("table tbody"), "connectors", |t| {
        t.contains("Echo")
    })
    .await;
    assert!(
        rows.contains("100.0 %"),
        "the Echo connector succeeded once: {rows}"
    );
    snap(browser, "connectors").await;

    // An admin reviews a community template.
    let other = conveyor_api::auth::Authenticator::new(JWT_SECRET)
        .and_then(|a| a.mint("ws_other", "bob", Duration::from_secs(600)))
        .expect("token");
    let mut submitted = echo_template(stub);
    submitted["slug"] = json!("community-echo");
    submitted["name"] = json!("Community Echo");
    api_call(base, &other, reqwest::Method::POST, "/templates", submitted).await;
    browser.goto(format!("{base}/console/admin")).await?;
    let queue = wait_for(
        browser,
        By::Css("#review-queue tbody"),
        "review queue",
        |t| t.contains("Community Echo"),
    )
    .await;
    assert!(queue.contains("PENDING"), "{queue}");
    click(browser, "button[aria-label='Approve Community Echo']").await;
    wait_for(browser, By::Css("#review-queue tbody"), "approved", |t| {
        t.contains("APPROVED")
    })
    .await;
    click(browser, "button[aria-label='Feature Community Echo']").await;
    wait_for(browser, By::Css("#review-queue tbody"), "featured", |t| {
        t.contains("featured")
    })
    .await;
    snap(browser, "admin").await;
    browser
        .goto(format!("{base}/console/marketplace?source=community"))
        .await?;
    wait_for(
        browser,
        By::Css("table tbody"),
        "approved template listed",
        |t| t.contains("Community Echo"),
    )
    .await;

    // Phone width, and signing out.
    browser.set_window_rect(0, 0, 390, 844).await?;
    browser.goto(format!("{base}/console")).await?;
    snap(browser, "phone").await;
    click(browser, "form[action='/console/logout'] button").await;
    wait_for(browser, By::Tag("h1"), "signed out", |t| {
        t == "Conveyor console"
    })
    .await;
    browser.goto(format!("{base}/console/credentials")).await?;
    wait_for(browser, By::Tag("h1"), "still signed out", |t| {
        t == "Conveyor console"
    })
    .await;
    Ok(())
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn connect_goes_to_the_provider_and_comes_back_connected_in_chromium(pool: PgPool) {
    let provider = OAuthServer::start().await;
    let (address, auth, stop) = serve(&pool).await;
    let base = format!("http://{address}");
    let token = auth
        .mint("ws_demo", "ada", Duration::from_secs(600))
        .expect("token");
    api_call(
        &base,
        &token,
        reqwest::Method::PUT,
        "/credentials/crm",
        json!({"kind": "oauth2_authorization_code",
               "data": {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET},
               "oauth": {"authorize_url": format!("{}/authorize", provider.uri),
                         "token_url": format!("{}/token", provider.uri)}}),
    )
    .await;

    let driver = start_driver();
    let browser = open_browser(&driver).await;
    let outcome = connect(&browser, &base, &token).await;
    browser.quit().await.expect("quit");
    stop.cancel();
    drop(driver);
    outcome.expect("connecting");
    assert_eq!(
        provider.count("authorization_code"),
        1,
        "the provider was reached and its code exchanged once"
    );
}

/// Connect on the credentials page: the browser goes on to the provider,
/// whose authorize endpoint sends it straight back to the callback.
async fn connect(browser: &WebDriver, base: &str, token: &str) -> WebDriverResult<()> {
    browser.goto(format!("{base}/console/credentials")).await?;
    sign_in(browser, token).await;
    browser.goto(format!("{base}/console/credentials")).await?;
    let row = By::XPath("//tr[.//code[text()='crm']]");
    wait_for(browser, row.clone(), "not connected yet", |t| {
        t.to_lowercase().contains("needs_reconnect")
    })
    .await;
    click(browser, "button[aria-label='Connect crm']").await;
    wait_for(browser, By::Tag("h1"), "back from the provider", |t| {
        t == "Connected"
    })
    .await;
    let landed = browser.current_url().await?.to_string();
    assert!(
        landed.starts_with(&format!("{base}/api/v1/oauth/callback?")),
        "{landed}"
    );
    browser.goto(format!("{base}/console/credentials")).await?;
    let shown = wait_for(browser, row, "connected", |t| {
        t.to_lowercase().contains("connected") && !t.to_lowercase().contains("needs_reconnect")
    })
    .await;
    assert!(shown.contains("Reconnect"), "{shown}");
    Ok(())
}
