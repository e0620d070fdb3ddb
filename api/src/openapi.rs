//! The OpenAPI document, generated from the handlers' annotations, and a
//! human-readable reference page rendered from it.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::response::Html;
use axum::routing::get;
use axum::{Json, Router};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{OpenApi as OpenApiDoc, PathItem};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;

use crate::AppState;
use crate::routes;

/// The document's root: title, security scheme.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Conveyor API",
        description = "Durable execution of declarative HTTP connectors. Every route under /api/v1 takes `Authorization: Bearer <token>` (a JWT or a workspace API key); errors are `{\"error\":{\"code\",\"message\",\"details\"}}`."
    ),
    modifiers(&BearerAuth),
    security(("bearer" = []))
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut OpenApiDoc) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// Every documented route, under `/api/v1`.
pub fn router() -> OpenApiRouter<AppState> {
    let v1 = OpenApiRouter::new()
        .merge(routes::connectors::router())
        .merge(routes::executions::router())
        .merge(routes::credentials::router())
        .merge(routes::access::router())
        .merge(routes::admin::router())
        .merge(routes::templates::router())
        .merge(routes::usage::router());
    OpenApiRouter::with_openapi(ApiDoc::openapi()).nest("/api/v1", v1)
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

fn operations(item: &PathItem) -> Vec<(&'static str, &utoipa::openapi::path::Operation)> {
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

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
