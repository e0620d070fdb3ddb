//! The OpenAPI document, generated from the handlers' annotations, and a
//! human-readable reference page rendered from it.
//!
//! The statuses every operation shares (401, 429 and 503 everywhere; 404
//! with a path parameter; 400 with query parameters; 400, 413, 415 and 422
//! with a body; 403 on admin routes) are added by `StandardResponses`
//! from the operation's shape, so a new route cannot forget them; a
//! handler's attributes add what is particular to it (409, 403 for API
//! keys, a more precise description).

use std::fmt::Write as _;
use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::Html;
use axum::routing::get;
use axum::{Json, Router};
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi as OpenApiDoc, PathItem, Ref, RefOr};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;

use crate::AppState;
use crate::error::{ErrorBody, RATE_LIMIT_RETRY_AFTER_SECS, UNAVAILABLE_RETRY_AFTER_SECS};
use crate::routes;

/// The document's root: title, tags, security schemes, shared responses.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Conveyor API",
        description = "Durable execution of declarative HTTP connectors. Every route under /api/v1 takes `Authorization: Bearer <token>`, where the token is a JWT (HS256) or a workspace API key (`cvk_...`); every query is scoped by the caller's workspace. Errors are `{\"error\":{\"code\",\"message\",\"details\"}}`; 429 and 503 carry `Retry-After`."
    ),
    tags(
        (name = "connectors", description = "Versioned connector definitions"),
        (name = "executions", description = "Starting executions, their history and live events"),
        (name = "credentials", description = "Sealed workspace credentials (metadata only on the way out)"),
        (name = "access", description = "Workspace API keys and the audit log"),
        (name = "templates", description = "The template marketplace"),
        (name = "admin", description = "Cross-workspace operations (SaaS admins, user tokens only)"),
        (name = "schedules", description = "Cron schedules that start a connector"),
        (name = "webhooks", description = "Signed completion callbacks and the workspace signing secret"),
        (name = "triggers", description = "Inbound webhook triggers (deliveries arrive at POST /hooks/{id}, outside this document)"),
    ),
    components(schemas(ErrorBody)),
    modifiers(&SecuritySchemes),
    security(("bearer" = []), ("api_key" = []))
)]
pub struct ApiDoc;

/// A JWT or a workspace API key, both as `Authorization: Bearer`.
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut OpenApiDoc) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "HS256 JWT signed with CONVEYOR_JWT_SECRET; claims `sub`, `workspace_id`, `exp`",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("cvk_")
                    .description(Some(
                        "A workspace API key from POST /api/v1/api-keys, sent as a bearer token; it cannot manage keys or call admin routes",
                    ))
                    .build(),
            ),
        );
    }
}

/// Adds the statuses an operation's shape implies, and the error body to
/// every 4xx/5xx response. It runs on the finished document ([`split`]):
/// `ApiDoc`'s own modifiers run before the routes are merged in.
struct StandardResponses;

impl Modify for StandardResponses {
    fn modify(&self, openapi: &mut OpenApiDoc) {
        for (path, item) in &mut openapi.paths.paths {
            let admin = path.starts_with("/api/v1/admin/");
            for op in operations_mut(item) {
                add_standard_responses(op, admin);
            }
        }
    }
}

fn add_standard_responses(op: &mut Operation, admin: bool) {
    let has_in = |wanted: ParameterIn| {
        op.parameters.iter().flatten().any(|p| match p {
            RefOr::T(p) => p.parameter_in == wanted,
            RefOr::Ref(_) => false,
        })
    };
    let mut implied: Vec<(StatusCode, &str)> = vec![
        (
            StatusCode::UNAUTHORIZED,
            "Missing, malformed, expired or wrongly signed token; unknown or revoked API key",
        ),
        (
            StatusCode::TOO_MANY_REQUESTS,
            "The workspace is over its request rate; retry after `Retry-After` seconds",
        ),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "The database is unreachable, or every connection of the API process stayed busy; retry after `Retry-After` seconds",
        ),
    ];
    if has_in(ParameterIn::Path) {
        implied.push((
            StatusCode::NOT_FOUND,
            "Not found, or another workspace's (a path value that cannot exist is not found either)",
        ));
    }
    if has_in(ParameterIn::Query) {
        implied.push((
            StatusCode::BAD_REQUEST,
            "A query parameter is unknown, malformed or out of range",
        ));
    }
    if op.request_body.is_some() {
        implied.extend([
            (StatusCode::BAD_REQUEST, "The body is not valid JSON"),
            (
                StatusCode::PAYLOAD_TOO_LARGE,
                "The body exceeds CONVEYOR_MAX_REQUEST_BYTES",
            ),
            (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "The body is not `application/json`",
            ),
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                "Invalid fields; `details.errors` lists `{path, message}`",
            ),
        ]);
    }
    if admin {
        implied.push((
            StatusCode::FORBIDDEN,
            "Not an admin, or called with an API key",
        ));
    }
    for (status, description) in implied {
        op.responses
            .responses
            .entry(status.as_str().to_owned())
            .or_insert_with(|| ResponseBuilder::new().description(description).into());
    }
    for (code, response) in &mut op.responses.responses {
        let RefOr::T(response) = response else {
            continue;
        };
        let status = code
            .parse::<u16>()
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok());
        if response.description.is_empty() {
            response.description = status
                .and_then(|s| s.canonical_reason())
                .unwrap_or("Response")
                .to_owned();
        }
        let Some(status) = status.filter(|s| s.is_client_error() || s.is_server_error()) else {
            continue;
        };
        response.content.insert(
            "application/json".to_owned(),
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorBody")))
                .build()
                .into(),
        );
        let retry_after = match status {
            StatusCode::TOO_MANY_REQUESTS => Some(RATE_LIMIT_RETRY_AFTER_SECS),
            StatusCode::SERVICE_UNAVAILABLE => Some(UNAVAILABLE_RETRY_AFTER_SECS),
            _ => None,
        };
        if let Some(secs) = retry_after {
            response.headers.insert(
                "Retry-After".to_owned(),
                HeaderBuilder::new()
                    .schema(Some(
                        ObjectBuilder::new()
                            .schema_type(Type::Integer)
                            .minimum(Some(0)),
                    ))
                    .description(Some(format!(
                        "Seconds to wait before retrying (this server sends {secs})"
                    )))
                    .build()
                    .into(),
            );
        }
    }
}

/// Every documented route, under `/api/v1`.
fn router() -> OpenApiRouter<AppState> {
    let v1 = OpenApiRouter::new()
        .merge(routes::connectors::router())
        .merge(routes::executions::router())
        .merge(routes::credentials::router())
        .merge(routes::access::router())
        .merge(routes::admin::router())
        .merge(routes::workspaces::router())
        .merge(routes::templates::router())
        .merge(routes::usage::router())
        .merge(routes::oauth::router())
        .merge(routes::schedules::router())
        .merge(routes::triggers::router())
        .merge(routes::webhooks::router())
        .merge(routes::subscriptions::router());
    OpenApiRouter::with_openapi(ApiDoc::openapi()).nest("/api/v1", v1)
}

/// The routes under `/api/v1` and the finished document describing them.
pub fn split() -> (Router<AppState>, OpenApiDoc) {
    let (routes, mut doc) = router().split_for_parts();
    StandardResponses.modify(&mut doc);
    (routes, doc)
}

/// The OpenAPI document, as `GET /api/v1/openapi.json` serves it.
pub fn document() -> OpenApiDoc {
    split().1
}

/// `GET /api/v1/openapi.json` and the `/docs` page.
pub fn docs_routes(doc: Arc<OpenApiDoc>) -> Router<AppState> {
    let json = doc.clone();
    let page = Arc::new(render_page(&doc));
    Router::new()
        .route(
            "/api/v1/openapi.json",
            get(move || async move { Json((*json).clone()) }),
        )
        .route("/docs", get(move || async move { Html((*page).clone()) }))
}

/// A self-contained HTML reference: every operation with its summary,
/// parameters and responses.
fn render_page(doc: &OpenApiDoc) -> String {
    let mut out = String::from(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Conveyor API reference</title>\
         <style>body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}\
         h2{margin-top:2rem;border-bottom:1px solid #ddd}code{background:#f4f4f4;padding:0 .2rem}\
         .m{display:inline-block;min-width:4.5rem;font-weight:bold}.d{color:#555;margin:.2rem 0 1rem 4.7rem}</style>\
         </head><body><h1>Conveyor API reference</h1>",
    );
    let _ = write!(
        out,
        "<p>{}</p><p>Machine-readable: <a href=\"/api/v1/openapi.json\">/api/v1/openapi.json</a>.</p>",
        escape(doc.info.description.as_deref().unwrap_or("")),
    );
    for (path, item) in &doc.paths.paths {
        let _ = write!(out, "<h2><code>{}</code></h2>", escape(path));
        for (method, op) in operations(item) {
            let summary = op
                .summary
                .as_deref()
                .or(op.description.as_deref())
                .unwrap_or("");
            let _ = write!(
                out,
                "<div><span class=\"m\">{method}</span> <code>{}</code></div>",
                escape(path)
            );
            let _ = write!(out, "<div class=\"d\">{}", escape(summary));
            if let Some(params) = &op.parameters {
                let names: Vec<String> = params
                    .iter()
                    .filter_map(|p| match p {
                        utoipa::openapi::RefOr::T(p) => {
                            Some(format!("<code>{}</code>", escape(&p.name)))
                        }
                        utoipa::openapi::RefOr::Ref(_) => None,
                    })
                    .collect();
                if !names.is_empty() {
                    let _ = write!(out, "<br>Parameters: {}", names.join(", "));
                }
            }
            let codes: Vec<&str> = op.responses.responses.keys().map(String::as_str).collect();
            let _ = write!(out, "<br>Responses: {}</div>", escape(&codes.join(", ")));
        }
    }
    out.push_str("</body></html>");
    out
}

fn operations_mut(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        &mut item.get,
        &mut item.post,
        &mut item.put,
        &mut item.patch,
        &mut item.delete,
    ]
    .into_iter()
    .filter_map(Option::as_mut)
}

fn operations(item: &PathItem) -> Vec<(&'static str, &Operation)> {
    [
        ("GET", &item.get),
        ("POST", &item.post),
        ("PUT", &item.put),
        ("PATCH", &item.patch),
        ("DELETE", &item.delete),
    ]
    .into_iter()
    .filter_map(|(m, op)| op.as_ref().map(|op| (m, op)))
    .collect()
}

/// `text` as HTML text, by the console's template engine's escaper.
fn escape(text: &str) -> String {
    askama::filters::escape(text, askama::filters::Html)
        .map_or_else(|never| match never {}, |safe| safe.to_string())
}

#[cfg(test)]
mod tests {
    use axum::response::IntoResponse;
    use serde_json::{Value, json};

    use super::*;
    use crate::error::{ApiError, ERROR_CODES};
    use crate::routes::MAX_PAGE;

    fn doc() -> Value {
        serde_json::to_value(document()).expect("the document serialises")
    }

    /// `(method, path, operation)` of every operation.
    fn operations(doc: &Value) -> Vec<(String, String, Value)> {
        let mut all = Vec::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, op) in item.as_object().expect("path item") {
                all.push((method.clone(), path.clone(), op.clone()));
            }
        }
        all
    }

    fn param<'a>(op: &'a Value, name: &str) -> &'a Value {
        op["parameters"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["name"] == name))
            .unwrap_or_else(|| panic!("no parameter {name}"))
    }

    #[test]
    fn every_operation_is_named_tagged_and_states_the_shared_statuses() {
        let doc = doc();
        assert_eq!(doc["openapi"], "3.1.0");
        let ops = operations(&doc);
        assert!(ops.len() >= 41, "{} operations", ops.len());
        let mut ids = std::collections::BTreeSet::new();
        for (method, path, op) in &ops {
            let at = format!("{method} {path}");
            let id = op["operationId"].as_str().expect(&at);
            assert!(ids.insert(id.to_owned()), "{at}: operation id {id} twice");
            assert_eq!(op["tags"].as_array().map(Vec::len), Some(1), "{at}");
            let responses = op["responses"].as_object().expect(&at);
            for (code, response) in responses {
                let description = response["description"].as_str().unwrap_or("");
                assert!(!description.is_empty(), "{at} {code}: no description");
                if code.starts_with('4') || code.starts_with('5') {
                    assert_eq!(
                        response["content"]["application/json"]["schema"]["$ref"],
                        "#/components/schemas/ErrorBody",
                        "{at} {code}"
                    );
                }
            }
            for code in ["401", "429", "503"] {
                assert!(responses.contains_key(code), "{at}: no {code}");
            }
            for code in ["429", "503"] {
                let header = &responses[code]["headers"]["Retry-After"];
                assert_eq!(header["schema"]["type"], "integer", "{at} {code}");
            }
            let params = op["parameters"].as_array().cloned().unwrap_or_default();
            for p in &params {
                let name = p["name"].as_str().expect("name");
                // A path parameter is in the template, and nothing else is.
                assert_eq!(
                    p["in"] == "path",
                    path.contains(&format!("{{{name}}}")),
                    "{at}: parameter {name} is declared in {}",
                    p["in"]
                );
            }
            if params.iter().any(|p| p["in"] == "path") {
                assert!(responses.contains_key("404"), "{at}: no 404");
            }
            if params.iter().any(|p| p["in"] == "query") {
                assert!(responses.contains_key("400"), "{at}: no 400");
            }
            if op.get("requestBody").is_some() {
                for code in ["400", "413", "415", "422"] {
                    assert!(responses.contains_key(code), "{at}: no {code}");
                }
            }
            if path.starts_with("/api/v1/admin/") {
                assert!(responses.contains_key("403"), "{at}: no 403");
            }
            let security = op.get("security").unwrap_or(&doc["security"]);
            // The OAuth callback is the one route without a bearer token:
            // its single-use state authenticates it.
            let expected = if at == "get /api/v1/oauth/callback" {
                json!([{}])
            } else {
                json!([{"bearer": []}, {"api_key": []}])
            };
            assert_eq!(security, &expected, "{at}");
        }
        let schemes = &doc["components"]["securitySchemes"];
        assert_eq!(schemes["bearer"]["bearerFormat"], "JWT");
        assert_eq!(schemes["api_key"]["scheme"], "bearer");
    }

    #[test]
    fn bodies_have_the_real_schemas_with_their_bounds() {
        let doc = doc();
        let schemas = &doc["components"]["schemas"];
        for name in [
            "Connector",
            "Step",
            "Auth",
            "Body",
            "RetryPolicy",
            "ExecutionView",
            "StepRow",
            "CredentialMeta",
            "TemplateSummary",
            "Template",
            "ErrorBody",
            "RateLimit",
            "Concurrency",
            "WaitingFor",
        ] {
            assert!(schemas[name].is_object(), "no schema {name}");
        }
        assert_eq!(schemas["Connector"]["additionalProperties"], false);
        assert_eq!(schemas["Connector"]["properties"]["steps"]["maxItems"], 100);
        assert_eq!(
            schemas["Step"]["properties"]["extract"]["additionalProperties"]["$ref"],
            "#/components/schemas/Extraction"
        );
        assert_eq!(schemas["Extraction"]["oneOf"][0]["type"], "string");
        let auth_kinds: Vec<&Value> = schemas["Auth"]["oneOf"]
            .as_array()
            .expect("auth variants")
            .iter()
            .map(|v| &v["properties"]["type"]["enum"][0])
            .collect();
        assert_eq!(auth_kinds, ["none", "bearer", "api_key", "basic", "oauth2"]);
        let codes = &schemas["ErrorDetail"]["properties"]["code"]["enum"];
        assert_eq!(codes, &json!(ERROR_CODES));
        let ops = operations(&doc);
        let list = ops
            .iter()
            .find(|(m, p, _)| m == "get" && p == "/api/v1/executions")
            .map(|(_, _, op)| op)
            .expect("list executions");
        let limit = &param(list, "limit")["schema"];
        assert_eq!(
            (&limit["minimum"], &limit["maximum"]),
            (&json!(1), &json!(MAX_PAGE))
        );
        assert_eq!(
            param(list, "status")["schema"]["enum"],
            json!(["queued", "running", "succeeded", "failed", "cancelled"])
        );
        assert!(
            param(list, "status")
                .get("required")
                .is_none_or(|r| r == false)
        );
    }

    #[test]
    fn the_reference_page_shows_the_documents_text_as_text() {
        let mut doc = document();
        doc.info.description = Some("Use <b>care</b> & \"quotes\" 'here'".to_owned());
        let page = render_page(&doc);
        assert!(
            page.contains(
                "<p>Use &#60;b&#62;care&#60;/b&#62; &#38; &#34;quotes&#34; &#39;here&#39;</p>"
            ),
            "{page}"
        );
        assert!(page.contains("<h2><code>/api/v1/connectors/{id}/execute</code></h2>"));
    }

    #[test]
    fn the_examples_are_accepted() {
        let doc = doc();
        let example = |path: &str| {
            doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]["example"]
                .clone()
        };
        conveyor_engine::connector::parse_and_validate(&example("/api/v1/connectors"))
            .expect("the connector example is a valid definition");
        conveyor_engine::marketplace::Template::parse(&example("/api/v1/templates"))
            .expect("the template example is a valid template");
    }

    #[test]
    fn rate_limits_and_outages_send_the_documented_retry_after() {
        for (status, secs) in [
            (StatusCode::TOO_MANY_REQUESTS, RATE_LIMIT_RETRY_AFTER_SECS),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                UNAVAILABLE_RETRY_AFTER_SECS,
            ),
        ] {
            let response = ApiError::new(status, "rate_limited", "x").into_response();
            assert_eq!(
                response.headers()["retry-after"],
                secs.to_string().as_str(),
                "{status}"
            );
        }
        let response = ApiError::not_found("connector").into_response();
        assert!(response.headers().get("retry-after").is_none());
    }
}
