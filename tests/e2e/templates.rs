//! Every official template in `templates/` runs through the real engine
//! (installed, enqueued, claimed and run by a worker) against a loopback
//! stub that checks each request as the provider's API would (method,
//! path, query, auth placement, content type, body) and answers with a
//! response shaped like the provider's documented example. One table of
//! cases: `tests/template_cases/<slug>.json`, plus `<slug>.<variant>.json`
//! for more credential kinds (`zoho-crm-list-leads.oauth.json`); a
//! template whose steps have `variants` needs a case for every kind its
//! credentials accept.
//!
//! A case file holds `input`, `settings` (`$STUB` stands for the stub's
//! base URL), `credentials` (name → fields), optional `credential_kinds`
//! (name → `kind` and `oauth` settings, for OAuth credentials whose token
//! request is the first stub request), `requests` (in order: `method`,
//! `path`, optional `query`, `headers`, `json` (partial match), `form`
//! (fields that must be present with these values), `body` (exact text),
//! optional `absent` (names no query parameter, header, form field or JSON
//! key at any depth may have: values the template leaves out), and
//! `respond` with `status` and `json` or `body`; any other field is an
//! error, so a misspelt check cannot pass unnoticed), and the expected
//! `output`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use conveyor_engine::marketplace::{InstallRequest, Template};
use conveyor_engine::oauth::CredentialKind;
use conveyor_engine::state::ExecutionStatus;
use conveyor_engine::store::credentials::{self, NewCredential};
use conveyor_tests::{Harness, WS, connector_create};
use serde_json::{Map, Value, json};
use sqlx::PgPool;
use wiremock::matchers::{body_partial_json, body_string, header, method, path, query_param};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn official_templates() -> Vec<(PathBuf, Template)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("templates"))
        .expect("templates/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let t =
                Template::parse(&read_json(&p)).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p, t)
        })
        .collect()
}

fn stubbed(value: &Value, stub: &str) -> Value {
    match value {
        Value::String(s) => Value::String(s.replace("$STUB", stub)),
        Value::Array(items) => Value::Array(items.iter().map(|v| stubbed(v, stub)).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), stubbed(v, stub)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Matches a form body that holds every `expected` field with its value.
struct FormFields(BTreeMap<String, String>);

impl wiremock::Match for FormFields {
    fn matches(&self, request: &Request) -> bool {
        let got: BTreeMap<String, String> = url::form_urlencoded::parse(&request.body)
            .into_owned()
            .collect();
        self.0.iter().all(|(k, v)| got.get(k) == Some(v))
    }
}

/// The fields a case's request may have.
const REQUEST_FIELDS: [&str; 9] = [
    "method", "path", "query", "headers", "json", "form", "body", "absent", "respond",
];

/// Matches a request in which none of these names is a query parameter,
/// a header, a form field or a JSON key (at any depth).
struct Absent(Vec<String>);

impl wiremock::Match for Absent {
    fn matches(&self, request: &Request) -> bool {
        fn keys(value: &Value, out: &mut Vec<String>) {
            match value {
                Value::Object(map) => map.iter().for_each(|(k, v)| {
                    out.push(k.clone());
                    keys(v, out);
                }),
                Value::Array(items) => items.iter().for_each(|v| keys(v, out)),
                _ => {}
            }
        }
        let mut present: Vec<String> = request
            .url
            .query_pairs()
            .map(|(k, _)| k.into_owned())
            .collect();
        present.extend(request.headers.keys().map(|h| h.as_str().to_owned()));
        match serde_json::from_slice::<Value>(&request.body) {
            Ok(json) => keys(&json, &mut present),
            Err(_) => present
                .extend(url::form_urlencoded::parse(&request.body).map(|(k, _)| k.into_owned())),
        }
        self.0
            .iter()
            .all(|name| !present.iter().any(|p| p.eq_ignore_ascii_case(name)))
    }
}

async fn mount(stub: &MockServer, spec: &Value, slug: &str) {
    let m = spec["method"]
        .as_str()
        .unwrap_or_else(|| panic!("{slug}: request without method"));
    let p = spec["path"]
        .as_str()
        .unwrap_or_else(|| panic!("{slug}: request without path"));
    let unknown: Vec<&String> = spec
        .as_object()
        .into_iter()
        .flat_map(|o| o.keys())
        .filter(|k| !REQUEST_FIELDS.contains(&k.as_str()))
        .collect();
    assert!(
        unknown.is_empty(),
        "{slug}: {m} {p}: unknown request fields {unknown:?} (known: {REQUEST_FIELDS:?})"
    );
    let mut mock = Mock::given(method(m)).and(path(p));
    for (k, v) in spec["query"].as_object().into_iter().flatten() {
        mock = mock.and(query_param(k.as_str(), v.as_str().unwrap_or_default()));
    }
    for (k, v) in spec["headers"].as_object().into_iter().flatten() {
        mock = mock.and(header(k.as_str(), v.as_str().unwrap_or_default()));
    }
    if let Some(body) = spec.get("json") {
        mock = mock.and(body_partial_json(body.clone()));
    }
    if let Some(form) = spec["form"].as_object() {
        let fields = form
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.as_str().map_or_else(|| v.to_string(), str::to_owned),
                )
            })
            .collect();
        mock = mock.and(FormFields(fields));
    }
    if let Some(body) = spec["body"].as_str() {
        mock = mock.and(body_string(body));
    }
    if let Some(absent) = spec["absent"].as_array() {
        let names = absent
            .iter()
            .filter_map(|n| n.as_str().map(str::to_owned))
            .collect();
        mock = mock.and(Absent(names));
    }
    let respond = &spec["respond"];
    let status = u16::try_from(respond["status"].as_u64().unwrap_or(200)).unwrap_or(200);
    let mut template = ResponseTemplate::new(status);
    if let Some(body) = respond.get("json") {
        template = template.set_body_json(body.clone());
    } else if let Some(body) = respond["body"].as_str() {
        template = template.set_body_string(body);
    }
    mock.respond_with(template)
        .expect(1)
        .named(format!("{slug}: {m} {p}"))
        .mount(stub)
        .await;
}

/// A template's case files: `<slug>.json` first, then `<slug>.*.json`.
fn case_files(slug: &str) -> Vec<PathBuf> {
    let dir = root().join("tests/template_cases");
    let mut more: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("tests/template_cases/")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{slug}.")) && n.ends_with(".json"))
                && p.file_stem().and_then(|n| n.to_str()) != Some(slug)
        })
        .collect();
    more.sort();
    let mut files = vec![dir.join(format!("{slug}.json"))];
    files.extend(more);
    files
}

/// The credential kinds a case stores (`static` unless `credential_kinds`
/// says otherwise).
fn case_kinds(case: &Value) -> Vec<CredentialKind> {
    case["credentials"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(name, _)| {
            case["credential_kinds"][name]["kind"]
                .as_str()
                .map_or(CredentialKind::Static, CredentialKind::parse)
        })
        .collect()
}

/// A template with `variants` must run with every kind its credentials
/// accept.
fn missing_kinds(template: &Template) -> Vec<String> {
    if template
        .connector
        .steps
        .iter()
        .all(|s| s.variants.is_empty())
    {
        return Vec::new();
    }
    let covered: Vec<CredentialKind> = case_files(&template.slug)
        .iter()
        .filter(|p| p.exists())
        .flat_map(|p| case_kinds(&read_json(p)))
        .collect();
    template
        .credentials
        .iter()
        .flat_map(|c| c.kinds.iter())
        .filter(|k| !covered.iter().any(|c| c.as_str() == k.as_str()))
        .map(|k| format!("{}: no case with a {k} credential", template.slug))
        .collect()
}

async fn run_case(
    h: &Harness,
    file: &Path,
    template: &Template,
    case_path: &Path,
) -> Result<(), String> {
    let slug = &template.slug;
    if !case_path.exists() {
        return Err(format!("{slug}: no case file {}", case_path.display()));
    }
    let stub = MockServer::start().await;
    let case = stubbed(&read_json(case_path), &stub.uri());
    for spec in case["requests"]
        .as_array()
        .ok_or_else(|| format!("{slug}: no requests"))?
    {
        mount(&stub, spec, slug).await;
    }
    // Anything that matches no expectation gets an answer that fails the
    // step and names the problem.
    Mock::given(wiremock::matchers::any())
        .respond_with(
            ResponseTemplate::new(418)
                .set_body_string("request did not match the provider's expectations"),
        )
        .with_priority(u8::MAX)
        .mount(&stub)
        .await;
    let result = execute_case(h, file, template, &case)
        .await
        .map_err(|e| format!("{}: {e}", case_path.display()));
    if result.is_ok() {
        stub.verify().await;
    } else {
        // Forget the expectations so dropping the stub does not panic and
        // hide the other templates' results.
        stub.reset().await;
    }
    result
}

async fn execute_case(
    h: &Harness,
    file: &Path,
    template: &Template,
    case: &Value,
) -> Result<(), String> {
    let slug = &template.slug;

    let mut bindings = BTreeMap::new();
    let mut kinds = BTreeMap::new();
    for (name, fields) in case["credentials"].as_object().into_iter().flatten() {
        let stored = format!("{slug}-{name}");
        let fields: BTreeMap<String, String> = serde_json::from_value(fields.clone())
            .map_err(|e| format!("{slug}: credentials.{name}: {e}"))?;
        // A case may store the credential as another kind, with its OAuth
        // settings (`credential_kinds.<name>`: `kind`, `oauth`).
        let how = &case["credential_kinds"][name];
        let kind = how["kind"]
            .as_str()
            .map_or(CredentialKind::Static, CredentialKind::parse);
        kinds.insert(stored.clone(), kind);
        let new = NewCredential {
            kind,
            fields: &fields,
            oauth: how.get("oauth").cloned(),
            status: "connected",
            status_reason: None,
        };
        credentials::put_kind(&h.pool, &h.keyring, WS, &stored, &new)
            .await
            .map_err(|e| e.to_string())?;
        bindings.insert(name.clone(), stored);
    }
    let request = InstallRequest {
        name: None,
        settings: case["settings"]
            .as_object()
            .cloned()
            .unwrap_or_else(Map::new),
        credentials: bindings,
    };
    let connector = template
        .install(&request, &kinds)
        .map_err(|e| format!("{slug}: install: {e}"))?;
    let installed = connector_create(&h.pool, &connector).await;
    let id = h.enqueue(installed, case["input"].clone()).await;
    let execution = h.run_until_final(id, Duration::from_secs(30)).await;
    if execution.status != ExecutionStatus::Succeeded {
        let steps = h.steps(id).await;
        let last = steps.last().map(
            |s| json!({"request": s.request, "status": s.response_status, "body": s.response_body}),
        );
        return Err(format!(
            "{slug} ({}): {} with {:?}; last attempt: {}",
            file.display(),
            execution.status,
            execution.error,
            last.unwrap_or(Value::Null)
        ));
    }
    let history = serde_json::to_string(&json!(
        h.steps(id)
            .await
            .iter()
            .map(|s| json!([s.request, s.response_body]))
            .collect::<Vec<_>>()
    ))
    .map_err(|e| e.to_string())?;
    for (name, fields) in case["credentials"].as_object().into_iter().flatten() {
        for (field, value) in fields.as_object().into_iter().flatten() {
            let secret = value.as_str().unwrap_or_default();
            if secret.len() >= 8 && history.contains(secret) {
                return Err(format!(
                    "{slug}: credentials.{name}.{field} reads back from the step history"
                ));
            }
        }
    }
    if execution.output.as_ref() != Some(&case["output"]) {
        return Err(format!(
            "{slug}: output {} != expected {}",
            execution.output.unwrap_or(Value::Null),
            case["output"]
        ));
    }
    Ok(())
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn every_official_template_runs_against_its_provider_stub(pool: PgPool) {
    let h = Harness::new(pool);
    let templates = official_templates();
    assert!(
        templates.len() >= 20,
        "only {} official templates",
        templates.len()
    );
    let mut failures = Vec::new();
    for (file, template) in &templates {
        failures.extend(missing_kinds(template));
        for case in case_files(&template.slug) {
            if let Err(e) = run_case(&h, file, template, &case).await {
                failures.push(e);
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} template(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn every_official_template_has_a_base_url_setting_and_a_unique_slug() {
    let mut slugs = std::collections::BTreeSet::new();
    for (file, t) in official_templates() {
        assert!(slugs.insert(t.slug.clone()), "duplicate slug {}", t.slug);
        assert_eq!(
            file.file_stem().and_then(|s| s.to_str()),
            Some(t.slug.as_str()),
            "file name must be the slug"
        );
        let url_from_credential = t
            .connector
            .steps
            .iter()
            .all(|s| s.url.starts_with("<<credentials."));
        assert!(
            url_from_credential
                || t.settings
                    .iter()
                    .any(|s| s.name == "base_url" || s.name.ends_with("_url")),
            "{}: its base URL must be a setting (or, when the URL is a secret, a credential)",
            t.slug
        );
    }
}

#[test]
fn no_official_template_keeps_a_secret_in_a_setting() {
    // Settings read back in clear (`GET /connectors/{id}`, step requests);
    // secrets, secret URLs included, belong in credentials.
    const SECRET_WORDS: [&str; 7] = [
        "webhook",
        "token",
        "secret",
        "password",
        "key",
        "signature",
        "auth",
    ];
    for (_, t) in official_templates() {
        for s in &t.settings {
            let name = s.name.to_ascii_lowercase();
            assert!(
                !SECRET_WORDS.iter().any(|w| name.contains(w)),
                "{}: setting `{}` looks like a secret; make it a credential",
                t.slug,
                s.name
            );
        }
    }
}

#[test]
fn every_case_request_uses_only_known_fields() {
    let dir = root().join("tests/template_cases");
    let mut problems = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("tests/template_cases/") {
        let file = entry.expect("entry").path();
        let case = read_json(&file);
        for (i, spec) in case["requests"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            for key in spec.as_object().into_iter().flatten().map(|(k, _)| k) {
                if !REQUEST_FIELDS.contains(&key.as_str()) {
                    problems.push(format!("{}: requests[{i}].{key}", file.display()));
                }
            }
        }
    }
    assert!(problems.is_empty(), "unknown request fields: {problems:?}");
}

#[tokio::test]
async fn absent_fails_the_match_wherever_a_named_key_is_present() {
    let stub = MockServer::start().await;
    Mock::given(method("POST"))
        .and(Absent(vec!["api_token".to_owned(), "start".to_owned()]))
        .respond_with(ResponseTemplate::new(200))
        .mount(&stub)
        .await;
    let client = reqwest::Client::new();
    let url = format!("{}/deals", stub.uri());
    let send = |query: &'static str, header: Option<&'static str>, body: &'static str| {
        let mut request = client.post(format!("{url}{query}")).body(body);
        if let Some(name) = header {
            request = request.header(name, "1");
        }
        request.send()
    };
    let cases = [
        ("nothing named", send("?limit=2", None, "title=Deal"), 200),
        ("a query parameter", send("?api_token=x", None, ""), 404),
        ("a header, any case", send("", Some("Start"), ""), 404),
        ("a form field", send("", None, "title=Deal&start=0"), 404),
        (
            "a nested JSON key",
            send("", None, r#"{"page": {"start": 0}}"#),
            404,
        ),
    ];
    for (case, response, want) in cases {
        let status = response.await.expect("stub answers").status().as_u16();
        assert_eq!(status, want, "{case}");
    }
}
