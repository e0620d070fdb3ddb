//! The console's forms and lists over HTTP (in-process router, real
//! PostgreSQL): unknown pages, delete answered with a redirect, a refused
//! credential form shown again as sent (names only), settings typed as
//! their defaults at install (with the real templates of `templates/`),
//! rating only approved templates, and the marketplace and review queue
//! filtered, ordered and paged in the query.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use conveyor_engine::marketplace::{Template, official};
use conveyor_engine::state::ReviewStatus;
use conveyor_engine::store::templates;
use conveyor_tests::api::{Reply, TestApi};
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::console::{Browser, assert_security_headers, location};
use crate::support::{PLANTED, api};

/// Publishes a community template of workspace `ws_b` straight to the store.
async fn community(pool: &PgPool, slug: &str, name: &str, provider: &str, status: ReviewStatus) {
    let definition = json!({
        "slug": slug, "name": name, "description": "Posts a greeting.", "category": "developer-tools",
        "provider": provider, "docs_url": "https://echo.example.com/docs", "version": "1.0.0",
        "credentials": [], "settings": [],
        "connector": {"name": name, "steps": [{"name": "say", "method": "GET", "url": "https://echo.example.com/"}]}
    });
    let template = Template::parse(&definition).expect("a valid template");
    templates::publish(pool, &template, false, Some("ws_b"), status)
        .await
        .expect("published");
}

/// Installs template `slug` through the console's form with `fields`;
/// the installed connector's settings, read back through the API.
async fn install(
    browser: &Browser<'_>,
    api: &TestApi,
    token: &str,
    slug: &str,
    fields: &[(&str, &str)],
) -> Value {
    let installed = browser
        .submit(&format!("/console/marketplace/{slug}/install"), fields)
        .await;
    assert_eq!(
        installed.status,
        StatusCode::SEE_OTHER,
        "{}",
        installed.text
    );
    let id = location(&installed).rsplit('/').next().expect("id");
    let connector = api.get(&format!("/api/v1/connectors/{id}"), token).await;
    connector.json["definition"]["settings"].clone()
}

/// How many templates a marketplace page lists.
fn rows(page: &Reply) -> usize {
    page.text
        .matches(r#"<td><a href="/console/marketplace/"#)
        .count()
}

/// The `offset` of the page's `rel="next"` link.
fn next_link(page: &Reply) -> Option<String> {
    let link = r#"rel="next" href=""#;
    let at = page.text.find(link)? + link.len();
    Some(
        page.text[at..]
            .split('"')
            .next()
            .unwrap_or_default()
            .replace("&amp;", "&"),
    )
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn unknown_console_paths_answer_a_404_page_with_the_security_headers(pool: PgPool) {
    let api = api(pool);
    let id = uuid::Uuid::now_v7();
    for (method, path) in [
        (Method::GET, "/console/nope".to_owned()),
        (Method::GET, format!("/console/executions/{id}/nope")),
        (Method::GET, "/console/credentials/crm".to_owned()),
        (Method::POST, "/console/nope".to_owned()),
    ] {
        let request = Request::builder()
            .method(method.clone())
            .uri(&path)
            .body(Body::empty())
            .expect("request");
        let reply = api.send_request(request).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{method} {path}");
        assert!(
            reply.text.contains("404 Not Found"),
            "{method} {path}: {}",
            reply.text
        );
        assert_security_headers(&path, &reply);
    }
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn deleting_a_credential_answers_a_redirect_so_a_reload_sends_nothing(pool: PgPool) {
    let api = api(pool);
    let token = api.token("ws_a", "alice");
    api.put_credential(&token, "crm", json!({"token": "t"}))
        .await;
    let browser = Browser::sign_in(&api, &token).await;
    let deleted = browser.submit("/console/credentials/crm/delete", &[]).await;
    assert_eq!(deleted.status, StatusCode::SEE_OTHER, "{}", deleted.text);
    assert_eq!(location(&deleted), "/console/credentials");
    let page = browser.get("/console/credentials").await;
    assert!(page.text.contains("No credentials yet."), "{}", page.text);
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn a_refused_credential_form_keeps_its_names_but_never_a_value(pool: PgPool) {
    let api = api(pool);
    let browser = Browser::sign_in(&api, &api.token("ws_a", "alice")).await;
    let refused = browser
        .submit(
            "/console/credentials",
            &[
                ("form", "custom"),
                ("name", "bad name!"),
                ("custom.1.name", "account_id"),
                ("custom.1.value", PLANTED),
                ("custom.2.name", "region"),
                ("custom.2.value", PLANTED),
            ],
        )
        .await;
    assert_eq!(
        refused.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        refused.text
    );
    assert!(!refused.text.contains(PLANTED), "a value was sent back");
    let page = &refused.text;
    assert!(
        page.contains(
            r##"Not saved: see the problems in the <a href="#form-custom">Custom fields</a> form."##
        ),
        "{page}"
    );
    // The problems are in the custom form, not in the bearer one before it.
    let custom = &page[page.find(r#"id="form-custom""#).expect("custom form")..];
    let bearer = &page[page.find(r#"id="form-bearer""#).expect("bearer form")..];
    let bearer = &bearer[..bearer.find("</form>").expect("end")];
    assert!(custom.contains(r#"class="problems""#), "{custom}");
    assert!(!bearer.contains(r#"class="problems""#), "{bearer}");
    assert!(!bearer.contains("bad name!"), "{bearer}");
    for kept in [
        r#"id="custom-name" name="name" value="bad name!""#,
        r#"name="custom.1.name" value="account_id""#,
        r#"name="custom.2.name" value="region""#,
        r#"name="custom.3.name" value="""#,
    ] {
        assert!(custom.contains(kept), "{kept} in {custom}");
    }

    // A kind's form: its name comes back in it.
    let refused = browser
        .submit(
            "/console/credentials",
            &[
                ("form", "basic"),
                ("name", "-bad"),
                ("data.username", PLANTED),
            ],
        )
        .await;
    assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(!refused.text.contains(PLANTED));
    assert!(
        refused
            .text
            .contains(r#"id="basic-name" name="name" value="-bad""#),
        "{}",
        refused.text
    );
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn install_keeps_settings_whose_default_is_not_a_string_typed(pool: PgPool) {
    let shipped = official().expect("the official templates");
    templates::sync_official(&pool, &shipped)
        .await
        .expect("synced");
    let api = api(pool);
    let token = api.token("ws_a", "alice");
    let browser = Browser::sign_in(&api, &token).await;

    // The form offers the defaults as JSON text and sends them back so.
    let page = browser
        .get("/console/marketplace/pipedrive-list-deals")
        .await;
    assert!(
        page.text
            .contains(r#"Setting <code>limit</code> (JSON)</label>"#)
            && page.text.contains(r#"name="settings.limit" value="100""#),
        "{}",
        page.text
    );
    let settings = install(
        &browser,
        &api,
        &token,
        "pipedrive-list-deals",
        &[
            ("settings.base_url", "https://acme.pipedrive.com"),
            ("settings.limit", "100"),
            ("credentials.pipedrive", "pipedrive"),
        ],
    )
    .await;
    assert_eq!(settings["limit"], json!(100), "{settings}");
    assert_eq!(settings["base_url"], json!("https://acme.pipedrive.com"));

    let trigger = r#"["approval","workflow","blueprint"]"#;
    let page = browser
        .get("/console/marketplace/zoho-crm-create-lead")
        .await;
    assert!(
        page.text
            .contains(r#"value="[&#34;approval&#34;,&#34;workflow&#34;,&#34;blueprint&#34;]""#),
        "{}",
        page.text
    );
    let settings = install(
        &browser,
        &api,
        &token,
        "zoho-crm-create-lead",
        &[
            ("settings.base_url", "https://www.zohoapis.com"),
            ("settings.api_version", "v2"),
            ("settings.trigger", trigger),
            ("credentials.zoho", "zoho"),
        ],
    )
    .await;
    assert_eq!(
        settings["trigger"],
        json!(["approval", "workflow", "blueprint"]),
        "{settings}"
    );
    assert_eq!(settings["api_version"], json!("v2"), "strings stay strings");

    // Text that is not JSON is refused at its field, kept as typed.
    let refused = browser
        .submit(
            "/console/marketplace/pipedrive-list-deals/install",
            &[
                ("settings.base_url", "https://acme.pipedrive.com"),
                ("settings.limit", "1oo"),
                ("credentials.pipedrive", "pipedrive"),
            ],
        )
        .await;
    refused.assert_refused(r#"<code class="path">settings.limit</code>"#);
    assert!(
        refused.text.contains("must be JSON, like its default 100"),
        "{}",
        refused.text
    );
    assert!(
        refused
            .text
            .contains(r#"name="settings.limit" value="1oo" aria-invalid="true""#),
        "{}",
        refused.text
    );
    assert!(
        refused
            .text
            .contains(r#"name="settings.base_url" value="https://acme.pipedrive.com""#)
    );
    let listed = api.get("/api/v1/connectors", &token).await;
    assert_eq!(listed.items().len(), 2, "nothing more was installed");
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn only_an_approved_template_offers_rating_and_a_refused_rating_keeps_the_review(
    pool: PgPool,
) {
    community(&pool, "mine", "Mine", "echo", ReviewStatus::Pending).await;
    let api = api(pool.clone());
    let author = Browser::sign_in(&api, &api.token("ws_b", "bob")).await;
    let page = author.get("/console/marketplace/mine").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.text);
    assert!(
        !page
            .text
            .contains(r#"action="/console/marketplace/mine/rate""#),
        "{}",
        page.text
    );
    assert!(
        page.text
            .contains("Ratings open once the template is approved.")
    );

    // A rating sent anyway (a page opened before) is refused on the page.
    let refused = author
        .submit(
            "/console/marketplace/mine/rate",
            &[("stars", "2"), ("review", "Needs & more <work>")],
        )
        .await;
    assert_eq!(refused.status, StatusCode::CONFLICT, "{}", refused.text);
    assert!(
        refused.text.contains(r#"id="rate-problems""#)
            && refused.text.contains("this one is not approved yet"),
        "{}",
        refused.text
    );
    assert!(!refused.text.contains(r#"id="install-problems""#));

    // Approved: the form is there, and a refused rating keeps what was typed.
    sqlx::query(
        "UPDATE connector_templates SET review_status = 'approved', approved_version = latest_version
         WHERE slug = 'mine'",
    )
    .execute(&pool)
    .await
    .expect("approve");
    let refused = author
        .submit(
            "/console/marketplace/mine/rate",
            &[("stars", "0"), ("review", "Needs &amp; more <work>")],
        )
        .await;
    refused.assert_refused(r#"<code class="path">stars</code>"#);
    assert!(
        refused
            .text
            .contains(r#"maxlength="2000">Needs &#38;amp; more &#60;work&#62;</textarea>"#),
        "{}",
        refused.text
    );
    let rated = author
        .submit(
            "/console/marketplace/mine/rate",
            &[("stars", "3"), ("review", "fine")],
        )
        .await;
    assert_eq!(rated.status, StatusCode::SEE_OTHER, "{}", rated.text);

    // Another workspace does not see a pending template at all.
    community(&pool, "theirs", "Theirs", "echo", ReviewStatus::Pending).await;
    let stranger = Browser::sign_in(&api, &api.token("ws_a", "alice")).await;
    let hidden = stranger
        .submit("/console/marketplace/theirs/rate", &[("stars", "5")])
        .await;
    assert_eq!(hidden.status, StatusCode::NOT_FOUND, "{}", hidden.text);
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn the_marketplace_filters_by_provider_in_the_query_and_pages(pool: PgPool) {
    // More templates before the provider's one than a page, or the old
    // cap of 200, holds.
    for n in 0..205 {
        let slug = format!("bulk-{n:03}");
        let name = format!("Bulk {n:03}");
        community(&pool, &slug, &name, "bulk", ReviewStatus::Approved).await;
    }
    community(&pool, "zeta", "Zeta", "late", ReviewStatus::Approved).await;
    let api = api(pool);
    let browser = Browser::sign_in(&api, &api.token("ws_a", "alice")).await;

    let late = browser.get("/console/marketplace?provider=LATE").await;
    assert_eq!(late.status, StatusCode::OK, "{}", late.text);
    assert!(
        late.text.contains(r#"href="/console/marketplace/zeta""#),
        "{}",
        late.text
    );
    assert_eq!(rows(&late), 1, "{}", late.text);
    assert!(next_link(&late).is_none());

    let mut path = "/console/marketplace?provider=bulk&sort=name".to_owned();
    let mut seen = 0;
    let mut pages = 0;
    loop {
        let page = browser.get(&path).await;
        assert_eq!(page.status, StatusCode::OK, "{path}: {}", page.text);
        assert!(!page.text.contains("/console/marketplace/zeta"), "{path}");
        assert!(
            page.text
                .contains(&format!(r#"href="/console/marketplace/bulk-{seen:03}""#)),
            "{path} starts at bulk-{seen:03}"
        );
        seen += rows(&page);
        pages += 1;
        match next_link(&page) {
            Some(next) => {
                assert!(next.contains("provider=bulk"), "{next}");
                path = next;
            }
            None => break,
        }
    }
    assert_eq!((seen, pages), (205, 5));
    let previous = browser
        .get("/console/marketplace?provider=bulk&offset=50")
        .await;
    assert!(
        previous.text.contains(r#"rel="prev""#) && previous.text.contains("offset=0"),
        "{}",
        previous.text
    );
    let bad = browser.get("/console/marketplace?offset=-1").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    let bad = browser.get("/console/marketplace?sort=newest").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.text.contains("invalid `sort`"), "{}", bad.text);
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn the_review_queue_lists_pending_templates_first_a_page_at_a_time(pool: PgPool) {
    for n in 0..205 {
        let slug = format!("bulk-{n:03}");
        let name = format!("Bulk {n:03}");
        community(&pool, &slug, &name, "bulk", ReviewStatus::Approved).await;
    }
    community(&pool, "zeta", "Zeta", "late", ReviewStatus::Pending).await;
    conveyor_engine::store::access::add_admin(&pool, "root")
        .await
        .expect("admin");
    let api = api(pool);
    let admin = Browser::sign_in(&api, &api.token("ops", "root")).await;

    let queue = |page: &Reply| -> String {
        let start = page.text.find(r#"id="review-queue""#).expect("queue");
        let rest = &page.text[start..];
        rest[..rest.find("</table>").expect("end")].to_owned()
    };
    let first = admin.get("/console/admin").await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text);
    let table = queue(&first);
    let zeta = table
        .find("Zeta <code")
        .expect("the pending template shown");
    assert!(
        table.find("Bulk 000").is_some_and(|bulk| zeta < bulk),
        "pending first: {table}"
    );
    assert_eq!(table.matches("<tr>").count(), 51, "a header and 50 rows");
    assert!(
        first
            .text
            .contains(r#"href="/console/admin?reviews=50#review-queue""#),
        "{}",
        first.text
    );
    let last = admin.get("/console/admin?reviews=200").await;
    let table = queue(&last);
    assert!(
        table.contains("Bulk 199") && table.contains("Bulk 204") && !table.contains("Zeta"),
        "{table}"
    );
    assert!(!last.text.contains("More community templates"));
    assert!(
        last.text
            .contains(r#"href="/console/admin?reviews=150#review-queue""#)
    );
    let bad = admin.get("/console/admin?reviews=x").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
}
