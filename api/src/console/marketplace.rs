//! The marketplace: browse, search, filter and sort templates, a page at a
//! time; one template's page with what it needs, its ratings, an install
//! form (re-shown with the API's 422 problems by field; a setting whose
//! default is not a string is read as JSON) and, once the template is
//! approved, a rating form.

use askama::Template;
use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use conveyor_engine::store::credentials;
use conveyor_engine::store::templates::{self, TemplateFilter};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::session::Session;
use super::{
    Fields, Layout, Nav, PageResult, Problem, body_json, handler_body, problems, render, see_other,
};
use crate::AppState;
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiPath};
use crate::routes::templates::{get_template, install_template, rate_template};

/// Templates a marketplace page lists.
const PAGE: i64 = 50;

/// The browse form.
#[derive(Debug, Default, Deserialize)]
pub(super) struct BrowseQuery {
    #[serde(default)]
    q: String,
    #[serde(default)]
    category: String,
    #[serde(default)]
    provider: String,
    #[serde(default)]
    source: String,
    #[serde(default)]
    sort: String,
    /// Templates skipped: the page's start.
    #[serde(default)]
    offset: String,
}

/// One template in the list.
#[derive(Debug)]
struct Card {
    slug: String,
    name: String,
    description: String,
    category: String,
    provider: String,
    official: bool,
    featured: bool,
    installs: i64,
    rating: String,
}

#[derive(Template)]
#[template(path = "console/marketplace.html")]
struct ListPage {
    layout: Layout,
    q: BrowseQuery,
    cards: Vec<Card>,
    /// The offsets of the previous and next pages, when there are some.
    previous: Option<i64>,
    next: Option<i64>,
}

fn rating(average: Option<f64>, count: i64) -> String {
    match average {
        Some(avg) => format!("{avg:.1} ★ ({count})"),
        None => "no ratings".to_owned(),
    }
}

fn non_empty(value: &str) -> Option<String> {
    Some(value.trim().to_owned()).filter(|v| !v.is_empty())
}

fn text(value: &Value, key: &str) -> String {
    value[key].as_str().unwrap_or_default().to_owned()
}

/// `GET /console/marketplace`.
pub(super) async fn list(
    State(state): State<AppState>,
    session: Session,
    Query(q): Query<BrowseQuery>,
) -> PageResult {
    let official = match q.source.trim() {
        "" => None,
        "official" => Some(true),
        "community" => Some(false),
        other => {
            return Err(ApiError::bad_request(format!(
                "invalid `source` `{other}`: expected official or community"
            ))
            .into());
        }
    };
    let sort = match q.sort.trim() {
        "" => "name",
        sort @ ("installs" | "rating" | "name") => sort,
        other => {
            return Err(ApiError::bad_request(format!(
                "invalid `sort` `{other}`: expected installs, rating or name"
            ))
            .into());
        }
    };
    let offset = match q.offset.trim() {
        "" => 0,
        text => text
            .parse::<i64>()
            .ok()
            .filter(|o| *o >= 0)
            .ok_or_else(|| ApiError::bad_request("`offset` must be a whole number, 0 or more"))?,
    };
    // The provider is filtered in the query, so every page is full.
    let filter = TemplateFilter {
        viewer: Some(session.caller.workspace_id.clone()),
        q: non_empty(&q.q),
        category: non_empty(&q.category),
        official,
        sort: sort.to_owned(),
        limit: PAGE + 1,
        offset,
        provider: non_empty(&q.provider),
        ..TemplateFilter::default()
    };
    let mut found = templates::list(&state.pool, &filter).await?;
    let next = (found.len() > PAGE as usize).then_some(offset + PAGE);
    found.truncate(PAGE as usize);
    let cards = found
        .into_iter()
        .map(|t| Card {
            rating: rating(t.rating_average, t.rating_count),
            slug: t.slug,
            name: t.name,
            description: t.description,
            category: t.category,
            provider: t.provider,
            official: t.official,
            featured: t.featured,
            installs: t.install_count,
        })
        .collect();
    render(&ListPage {
        layout: session.layout("Marketplace", Nav::Marketplace),
        q,
        cards,
        previous: (offset > 0).then(|| (offset - PAGE).max(0)),
        next,
    })
}

/// A setting the install form asks for.
#[derive(Debug)]
struct Setting {
    name: String,
    description: String,
    value: String,
    /// Typed as JSON (its default is not a string).
    json: bool,
    problem: Option<String>,
}

/// Whether a setting with this default is read as JSON: a number, an
/// array or an object must reach the connector as one, not as its text.
fn is_json(default: &Value) -> bool {
    !matches!(default, Value::Null | Value::String(_))
}

/// The rating form's choices, as `(stars, label)`.
const STARS: [(&str, &str); 5] = [
    ("5", "5 ★★★★★"),
    ("4", "4 ★★★★"),
    ("3", "3 ★★★"),
    ("2", "2 ★★"),
    ("1", "1 ★"),
];

/// A form of the template page that was refused: what was sent, and the
/// problems to show at it.
enum Refused<'a> {
    Install(&'a Fields, Vec<Problem>),
    Rate(&'a Fields, Vec<Problem>),
}

/// A credential the template needs, mapped to one of the workspace's.
#[derive(Debug)]
struct Need {
    name: String,
    auth: String,
    fields: String,
    hint: String,
    chosen: String,
    problem: Option<String>,
}

#[derive(Template)]
#[template(path = "console/template.html")]
struct TemplatePage {
    layout: Layout,
    slug: String,
    name: String,
    description: String,
    docs_url: String,
    category: String,
    provider: String,
    version: String,
    review_status: String,
    installs: i64,
    rating: String,
    settings: Vec<Setting>,
    needs: Vec<Need>,
    workspace_credentials: Vec<String>,
    connector_name: String,
    problems: Vec<Problem>,
    /// Only an approved template can be rated.
    approved: bool,
    stars: &'static [(&'static str, &'static str)],
    chosen_stars: String,
    review: String,
    rate_problems: Vec<Problem>,
}

fn problem_at(found: &[Problem], path: &str) -> Option<String> {
    found
        .iter()
        .find(|p| p.path == path)
        .map(|p| p.message.clone())
}

async fn show(
    state: &AppState,
    session: &Session,
    slug: String,
    refused: Option<Refused<'_>>,
    status: StatusCode,
) -> PageResult {
    let (form, found, rate_problems) = match refused {
        None => (None, Vec::new(), Vec::new()),
        Some(Refused::Install(form, found)) => (Some(form), found, Vec::new()),
        Some(Refused::Rate(form, found)) => (Some(form), Vec::new(), found),
    };
    let body = get_template(
        State(state.clone()),
        session.caller.clone(),
        ApiPath(slug.clone()),
    )
    .await?
    .0;
    let definition = &body["template"];
    let field = |name: &str| form.and_then(|f| f.get(name)).map(str::to_owned);
    let settings = definition["settings"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            let name = text(s, "name");
            let default = match &s["default"] {
                Value::Null => String::new(),
                Value::String(v) => v.clone(),
                other => other.to_string(),
            };
            Setting {
                value: field(&format!("settings.{name}")).unwrap_or(default),
                json: is_json(&s["default"]),
                problem: problem_at(&found, &format!("settings.{name}")),
                description: text(s, "description"),
                name,
            }
        })
        .collect();
    let workspace_credentials: Vec<String> =
        credentials::list(&state.pool, &session.caller.workspace_id)
            .await?
            .into_iter()
            .map(|c| c.name)
            .collect();
    let needs = definition["credentials"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            let name = text(c, "name");
            Need {
                // Suggest the workspace's credential of the same name.
                chosen: field(&format!("credentials.{name}")).unwrap_or_else(|| {
                    if workspace_credentials.contains(&name) {
                        name.clone()
                    } else {
                        String::new()
                    }
                }),
                problem: problem_at(&found, &format!("credentials.{name}")),
                auth: text(c, "auth"),
                fields: c["fields"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(", "),
                hint: text(c, "hint"),
                name,
            }
        })
        .collect();
    let mut response = render(&TemplatePage {
        layout: session.layout(text(&body, "name"), Nav::Marketplace),
        name: text(&body, "name"),
        description: text(&body, "description"),
        // Only web links: a `javascript:` URL in a community template
        // must not become a link (the CSP would block it anyway).
        docs_url: Some(text(&body, "docs_url"))
            .filter(|u| u.starts_with("https://") || u.starts_with("http://"))
            .unwrap_or_default(),
        category: text(&body, "category"),
        provider: text(&body, "provider"),
        version: body["approved_version"]
            .as_str()
            .map_or_else(|| text(&body, "latest_version"), str::to_owned),
        approved: text(&body, "review_status") == "approved",
        review_status: text(&body, "review_status"),
        installs: body["install_count"].as_i64().unwrap_or(0),
        rating: rating(
            body["rating_average"].as_f64(),
            body["rating_count"].as_i64().unwrap_or(0),
        ),
        settings,
        needs,
        workspace_credentials,
        connector_name: field("name").unwrap_or_default(),
        problems: found,
        stars: &STARS,
        chosen_stars: field("stars").unwrap_or_default(),
        review: field("review").unwrap_or_default(),
        rate_problems,
        slug,
    })?;
    *response.status_mut() = status;
    Ok(response)
}

/// `GET /console/marketplace/{slug}`.
pub(super) async fn template(
    State(state): State<AppState>,
    session: Session,
    Path(slug): Path<String>,
) -> PageResult {
    show(&state, &session, slug, None, StatusCode::OK).await
}

/// `POST /console/marketplace/{slug}/install`: installs, then shows the
/// new connector; the API's 422 problems are shown at their fields.
pub(super) async fn install(
    State(state): State<AppState>,
    session: Session,
    Path(slug): Path<String>,
    Form(form): Form<Fields>,
) -> PageResult {
    session.check(&form)?;
    let template = get_template(
        State(state.clone()),
        session.caller.clone(),
        ApiPath(slug.clone()),
    )
    .await?
    .0;
    let declared = template["template"]["settings"].as_array();
    let typed = |name: &str| {
        declared
            .into_iter()
            .flatten()
            .find(|s| s["name"] == name)
            .map(|s| &s["default"])
            .filter(|default| is_json(default))
    };
    let mut settings = Map::new();
    let mut unparsed = Vec::new();
    for (name, value) in form.with_prefix("settings.") {
        if value.trim().is_empty() {
            continue;
        }
        let Some(default) = typed(name) else {
            settings.insert(name.to_owned(), json!(value));
            continue;
        };
        match serde_json::from_str::<Value>(value) {
            Ok(parsed) => {
                settings.insert(name.to_owned(), parsed);
            }
            Err(e) => unparsed.push(Problem {
                path: format!("settings.{name}"),
                message: format!("must be JSON, like its default {default}: {e}"),
            }),
        }
    }
    if !unparsed.is_empty() {
        return show(
            &state,
            &session,
            slug,
            Some(Refused::Install(&form, unparsed)),
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await;
    }
    let mapped: Map<String, Value> = form
        .with_prefix("credentials.")
        .filter(|(_, v)| !v.trim().is_empty())
        .map(|(k, v)| (k.to_owned(), json!(v.trim())))
        .collect();
    let mut request = json!({"settings": settings, "credentials": mapped});
    if let Some(name) = form.text("name") {
        request["name"] = json!(name);
    }
    let installed = match handler_body(&request) {
        Ok(body) => {
            install_template(
                State(state.clone()),
                session.caller.clone(),
                ApiPath(slug.clone()),
                ApiJson(body),
            )
            .await
        }
        Err(e) => Err(e),
    };
    match installed {
        Ok(response) => {
            let created = body_json(response).await?;
            see_other(&format!(
                "/console/connectors/{}",
                created["id"].as_str().unwrap_or_default()
            ))
        }
        Err(e) if e.status().is_client_error() && e.status() != StatusCode::NOT_FOUND => {
            show(
                &state,
                &session,
                slug,
                Some(Refused::Install(&form, problems(&e))),
                e.status(),
            )
            .await
        }
        Err(e) => Err(e.into()),
    }
}

/// `POST /console/marketplace/{slug}/rate`; a refusal is shown at the
/// form, which keeps the review typed.
pub(super) async fn rate(
    State(state): State<AppState>,
    session: Session,
    Path(slug): Path<String>,
    Form(form): Form<Fields>,
) -> PageResult {
    session.check(&form)?;
    let stars: i64 = form.text("stars").and_then(|s| s.parse().ok()).unwrap_or(0);
    let mut request = json!({"stars": stars});
    if let Some(review) = form.text("review") {
        request["review"] = json!(review);
    }
    let body = match handler_body(&request) {
        Ok(body) => body,
        Err(e) => {
            let refused = Refused::Rate(&form, problems(&e));
            return show(&state, &session, slug, Some(refused), e.status()).await;
        }
    };
    match rate_template(
        State(state.clone()),
        session.caller.clone(),
        ApiPath(slug.clone()),
        ApiJson(body),
    )
    .await
    {
        Ok(_) => see_other(&format!("/console/marketplace/{slug}")),
        // The API answers 404 for a template this workspace sees but may
        // not rate yet (its own pending submission); `show` still answers
        // 404 for one it does not see at all.
        Err(e) if e.status() == StatusCode::NOT_FOUND => {
            let problem = Problem {
                path: String::new(),
                message: "Only approved templates can be rated; this one is not approved yet."
                    .to_owned(),
            };
            let refused = Refused::Rate(&form, vec![problem]);
            show(&state, &session, slug, Some(refused), StatusCode::CONFLICT).await
        }
        Err(e) if e.status().is_client_error() => {
            let refused = Refused::Rate(&form, problems(&e));
            show(&state, &session, slug, Some(refused), e.status()).await
        }
        Err(e) => Err(e.into()),
    }
}
