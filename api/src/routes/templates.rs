//! The template marketplace: browse, install, rate, submit; and the admin
//! side: publish official templates, review community ones, feature,
//! retire, and read how a template performs.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use conveyor_engine::marketplace::{InstallRequest, Template};
use conveyor_engine::oauth::CredentialKind;
use conveyor_engine::state::ReviewStatus;
use conveyor_engine::store::credentials;
use conveyor_engine::store::templates::{self, Approval, Published, Rejection, TemplateFilter};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::audit;
use crate::AppState;
use crate::auth::{Admin, Caller, Operator};
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::schemas::{
    FeatureResult, InstalledConnector, RatingResult, ReviewResult, TemplateDetail,
    TemplateMetricsReport, TemplatePage, TemplateSubmitted, TemplateVersionRef, template_example,
};

/// This group's routes.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_templates, submit_template))
        .routes(routes!(get_template))
        .routes(routes!(install_template))
        .routes(routes!(rate_template))
        .routes(routes!(admin_list_templates, admin_create_template))
        .routes(routes!(admin_update_template, admin_retire_template))
        .routes(routes!(admin_approve_template))
        .routes(routes!(admin_reject_template))
        .routes(routes!(admin_feature_template, admin_unfeature_template))
        .routes(routes!(admin_template_metrics))
}

/// Every community slug starts with this, so no submission can take a
/// name an official template (present or future) needs.
const COMMUNITY_PREFIX: &str = "community-";

fn template_errors(e: conveyor_engine::connector::ValidationErrors) -> ApiError {
    ApiError::validation(
        format!("invalid template: {e}"),
        serde_json::to_value(&e.0).unwrap_or(Value::Null),
    )
}

/// Marketplace filters.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListQuery {
    /// Text searched in name, description, provider and slug.
    q: Option<String>,
    /// Only this category.
    category: Option<String>,
    /// `official` or `community`.
    #[param(schema_with = source_schema)]
    source: Option<String>,
    /// Only featured (`true`) or not featured (`false`).
    featured: Option<bool>,
    /// `installs`, `rating` or `name` (default).
    #[param(schema_with = sort_schema)]
    sort: Option<String>,
    /// Page size (default 50, at most 200).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<i64>,
    /// Rows to skip (default 0): the previous page's `next_offset`.
    #[param(minimum = 0)]
    offset: Option<i64>,
}

fn string_enum(values: &[&str]) -> utoipa::openapi::schema::ObjectBuilder {
    utoipa::openapi::schema::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .enum_values(Some(values.iter().copied()))
}

fn source_schema() -> utoipa::openapi::schema::ObjectBuilder {
    string_enum(&["official", "community"])
}

fn sort_schema() -> utoipa::openapi::schema::ObjectBuilder {
    string_enum(&["installs", "rating", "name"])
}

fn filter(q: ListQuery, viewer: Option<String>) -> ApiResult<TemplateFilter> {
    let official = match q.source.as_deref() {
        None => None,
        Some("official") => Some(true),
        Some("community") => Some(false),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "invalid `source` `{other}`: expected official or community"
            )));
        }
    };
    let sort = q.sort.unwrap_or_else(|| "name".into());
    if !matches!(sort.as_str(), "installs" | "rating" | "name") {
        return Err(ApiError::bad_request(format!(
            "invalid `sort` `{sort}`: expected installs, rating or name"
        )));
    }
    let limit = q.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(ApiError::bad_request("`limit` must be between 1 and 200"));
    }
    let offset = q.offset.unwrap_or(0);
    if offset < 0 {
        return Err(ApiError::bad_request("`offset` must not be negative"));
    }
    Ok(TemplateFilter {
        viewer,
        q: q.q.filter(|s| !s.trim().is_empty()),
        category: q.category,
        official,
        featured: q.featured,
        sort,
        limit: limit + 1,
        offset,
        ..TemplateFilter::default()
    })
}

async fn page(state: &AppState, f: TemplateFilter) -> ApiResult<Json<Value>> {
    let limit = usize::try_from(f.limit - 1).unwrap_or(0);
    let offset = f.offset;
    let mut items = templates::list(&state.pool, &f).await?;
    let more = items.len() > limit;
    items.truncate(limit);
    let next = more.then(|| offset + i64::try_from(limit).unwrap_or(0));
    Ok(Json(json!({"items": items, "next_offset": next})))
}

/// Browse the marketplace: approved templates and your own submissions.
#[utoipa::path(get, path = "/templates", tag = "templates", operation_id = "list_templates", params(ListQuery),
    responses((status = 200, description = "Approved templates and your own submissions", body = TemplatePage)))]
pub(crate) async fn list_templates(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<Value>> {
    page(&state, filter(q, Some(caller.workspace_id))?).await
}

/// One template with its definition, ratings and install count: the
/// approved version, so a version awaiting review hides nothing; its
/// author also sees that version's number and review status, and, while
/// none is approved, the version itself.
#[utoipa::path(get, path = "/templates/{slug}", tag = "templates", operation_id = "get_template", params(("slug" = String, Path, description = "The template")),
    responses((status = 200, description = "The template with the definition of its approved version", body = TemplateDetail),
              (status = 404, description = "No such template visible to this workspace")))]
pub(crate) async fn get_template(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(slug): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    let (summary, definition) = templates::get(&state.pool, &slug, Some(&caller.workspace_id))
        .await?
        .ok_or_else(|| ApiError::not_found("template"))?;
    let mut body = serde_json::to_value(&summary).map_err(|e| ApiError::internal(&e))?;
    body["template"] = definition;
    Ok(Json(body))
}

/// The kind of each credential of the workspace, by name.
pub(crate) async fn credential_kinds(
    state: &AppState,
    workspace_id: &str,
) -> ApiResult<BTreeMap<String, CredentialKind>> {
    Ok(credentials::list(&state.pool, workspace_id)
        .await?
        .into_iter()
        .map(|c| (c.name, CredentialKind::parse(&c.kind)))
        .collect())
}

/// The body of an install.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct InstallBody {
    /// The connector's name (default: the template's).
    #[schema(min_length = 1, max_length = 200, pattern = r"\S")]
    name: Option<String>,
    /// Setting values overriding the template's defaults.
    #[serde(default)]
    #[schema(value_type = std::collections::HashMap<String, Value>)]
    settings: serde_json::Map<String, Value>,
    /// Template credential name → workspace credential name.
    #[serde(default)]
    credentials: std::collections::BTreeMap<String, String>,
}

/// Install a template: creates a connector in your workspace.
#[utoipa::path(post, path = "/templates/{slug}/install", tag = "templates", operation_id = "install_template", params(("slug" = String, Path, description = "The template")),
    request_body(content = InstallBody, example = json!({"settings": {"channel": "#general"}, "credentials": {"slack": "slack-bot"}})),
    responses((status = 201, description = "The new connector", body = InstalledConnector),
              (status = 404, description = "No such template visible to this workspace"),
              (status = 409, description = "The template is not approved yet"),
              (status = 422, description = "Each missing setting or credential mapping, and each mapped credential of a kind the template does not accept, by path")))]
pub(crate) async fn install_template(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(slug): ApiPath<String>,
    ApiJson(body): ApiJson<InstallBody>,
) -> ApiResult<Response> {
    let (summary, definition) = templates::get(&state.pool, &slug, Some(&caller.workspace_id))
        .await?
        .ok_or_else(|| ApiError::not_found("template"))?;
    // The definition is the approved version's; only the author of a
    // template with none approved yet gets this far without one.
    if summary.approved_version.is_none() {
        return Err(ApiError::conflict(format!(
            "the template is {} and cannot be installed yet",
            summary.review_status
        )));
    }
    let template = Template::parse(&definition).map_err(|e| ApiError::internal(&e))?;
    let request = InstallRequest {
        name: body.name,
        settings: body.settings,
        credentials: body.credentials,
    };
    let kinds = credential_kinds(&state, &caller.workspace_id).await?;
    let connector = template.install(&request, &kinds).map_err(|e| {
        ApiError::validation(
            format!("cannot install: {e}"),
            serde_json::to_value(&e.0).unwrap_or(Value::Null),
        )
    })?;
    let (id, version) = templates::install(
        &state.pool,
        &caller.workspace_id,
        &slug,
        &template.version,
        &connector,
    )
    .await?;
    audit(
        &state,
        &caller,
        "template.install",
        "connector",
        Some(&id.to_string()),
        json!({"template": slug, "template_version": template.version}),
    )
    .await;
    Ok((
        StatusCode::CREATED,
        Json(json!({"id": id, "version": version, "template_slug": slug, "template_version": template.version})),
    )
        .into_response())
}

/// The body of a rating.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RatingBody {
    /// 1 to 5.
    #[schema(minimum = 1, maximum = 5)]
    stars: i16,
    /// A short review (up to 2,000 characters).
    #[schema(max_length = 2000)]
    review: Option<String>,
}

/// Rate a template (one rating per workspace; rating again replaces it).
#[utoipa::path(post, path = "/templates/{slug}/ratings", tag = "templates", operation_id = "rate_template", params(("slug" = String, Path, description = "The template")),
    request_body(content = RatingBody, example = json!({"stars": 5, "review": "Worked first time"})),
    responses((status = 200, description = "The template's new average and count", body = RatingResult),
              (status = 404, description = "No such approved template")))]
pub(crate) async fn rate_template(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(slug): ApiPath<String>,
    ApiJson(body): ApiJson<RatingBody>,
) -> ApiResult<Json<Value>> {
    if !(1..=5).contains(&body.stars) {
        return Err(ApiError::validation(
            "stars: must be between 1 and 5",
            json!([{"path": "stars", "message": "must be between 1 and 5"}]),
        ));
    }
    if body
        .review
        .as_ref()
        .is_some_and(|r| r.chars().count() > 2000)
    {
        return Err(ApiError::validation(
            "review: at most 2000 characters",
            json!([{"path": "review", "message": "at most 2000 characters"}]),
        ));
    }
    templates::get(&state.pool, &slug, Some(&caller.workspace_id))
        .await?
        .filter(|(t, _)| t.approved_version.is_some())
        .ok_or_else(|| ApiError::not_found("template"))?;
    templates::rate(
        &state.pool,
        &slug,
        &caller.workspace_id,
        body.stars,
        body.review.as_deref(),
    )
    .await?;
    audit(
        &state,
        &caller,
        "template.rate",
        "template",
        Some(&slug),
        json!({"stars": body.stars}),
    )
    .await;
    let (summary, _) = templates::get(&state.pool, &slug, Some(&caller.workspace_id))
        .await?
        .ok_or_else(|| ApiError::not_found("template"))?;
    Ok(Json(
        json!({"slug": slug, "rating_average": summary.rating_average, "rating_count": summary.rating_count}),
    ))
}

/// Submit a community template: validated like a connector, then
/// `pending` and visible only to your workspace until an admin approves it.
#[utoipa::path(post, path = "/templates", tag = "templates", operation_id = "submit_template",
    request_body(content = Template, description = "A template: metadata, credentials, settings and the connector", example = template_example),
    responses((status = 201, description = "Submitted: pending review, visible only to this workspace", body = TemplateSubmitted),
              (status = 409, description = "The slug is taken, or this version (or a newer one) exists"),
              (status = 422, description = "Invalid template; `details.errors` lists `{path, message}`")))]
async fn submit_template(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<Value>,
) -> ApiResult<Response> {
    let template = Template::parse(&body).map_err(template_errors)?;
    if !template.slug.starts_with(COMMUNITY_PREFIX) {
        let message = format!(
            "community template slugs start with `{COMMUNITY_PREFIX}`; the others are reserved for official templates"
        );
        return Err(ApiError::validation(
            format!("invalid template: slug: {message}"),
            json!([{"path": "slug", "message": message}]),
        ));
    }
    match templates::publish(
        &state.pool,
        &template,
        false,
        Some(&caller.workspace_id),
        ReviewStatus::Pending,
    )
    .await?
    {
        Published::Conflict => Err(ApiError::conflict(format!(
            "the slug `{}` is taken",
            template.slug
        ))),
        Published::Unchanged => Err(ApiError::conflict(format!(
            "version {} of `{}` (or a newer one) exists: raise the version",
            template.version, template.slug
        ))),
        Published::Inserted | Published::NewVersion => {
            audit(
                &state,
                &caller,
                "template.submit",
                "template",
                Some(&template.slug),
                json!({"version": template.version}),
            )
            .await;
            Ok((StatusCode::CREATED, Json(json!({"slug": template.slug, "version": template.version, "review_status": ReviewStatus::Pending}))).into_response())
        }
    }
}

/// Every template, whatever its review status (admins).
#[utoipa::path(get, path = "/admin/templates", tag = "admin", operation_id = "admin_list_templates", params(ListQuery),
    responses((status = 403, description = "Needs the admin role `viewer` or above"),
              (status = 200, description = "Every template, whatever its review status", body = TemplatePage)))]
async fn admin_list_templates(
    State(state): State<AppState>,
    _admin: Admin,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<Value>> {
    page(&state, filter(q, None)?).await
}

/// Publish a new official template (admins).
#[utoipa::path(post, path = "/admin/templates", tag = "admin", operation_id = "admin_create_template",
    request_body(content = Template, description = "A new official template", example = template_example),
    responses((status = 403, description = "Needs the admin role `operator` or above"),
              (status = 201, description = "Published", body = TemplateVersionRef),
              (status = 409, description = "The slug exists: update it instead"),
              (status = 422, description = "Invalid template; `details.errors` lists `{path, message}`")))]
async fn admin_create_template(
    State(state): State<AppState>,
    Operator(caller): Operator,
    ApiJson(body): ApiJson<Value>,
) -> ApiResult<Response> {
    let template = Template::parse(&body).map_err(template_errors)?;
    match templates::publish(&state.pool, &template, true, None, ReviewStatus::Approved).await? {
        Published::Inserted => {
            audit(
                &state,
                &caller,
                "template.create",
                "template",
                Some(&template.slug),
                json!({"version": template.version}),
            )
            .await;
            Ok((
                StatusCode::CREATED,
                Json(json!({"slug": template.slug, "version": template.version})),
            )
                .into_response())
        }
        _ => Err(ApiError::conflict(format!(
            "the slug `{}` exists: update it instead",
            template.slug
        ))),
    }
}

/// Publish a new version of an official template (admins); the version
/// must be higher than the current one.
#[utoipa::path(put, path = "/admin/templates/{slug}", tag = "admin", operation_id = "admin_update_template", params(("slug" = String, Path, description = "The template")),
    request_body(content = Template, description = "The template's new version (same slug, higher version)"),
    responses((status = 403, description = "Needs the admin role `operator` or above"),
              (status = 200, description = "Published", body = TemplateVersionRef),
              (status = 404, description = "No such template"),
              (status = 409, description = "A community template, or the version is not newer"),
              (status = 422, description = "Invalid template, or its slug differs from the URL's")))]
async fn admin_update_template(
    State(state): State<AppState>,
    Operator(caller): Operator,
    ApiPath(slug): ApiPath<String>,
    ApiJson(body): ApiJson<Value>,
) -> ApiResult<Json<Value>> {
    let template = Template::parse(&body).map_err(template_errors)?;
    if template.slug != slug {
        return Err(ApiError::validation(
            "slug: must match the URL",
            json!([{"path": "slug", "message": "must match the URL"}]),
        ));
    }
    templates::get(&state.pool, &slug, None)
        .await?
        .ok_or_else(|| ApiError::not_found("template"))?;
    match templates::publish(&state.pool, &template, true, None, ReviewStatus::Approved).await? {
        Published::NewVersion => {
            audit(
                &state,
                &caller,
                "template.update",
                "template",
                Some(&slug),
                json!({"version": template.version}),
            )
            .await;
            Ok(Json(json!({"slug": slug, "version": template.version})))
        }
        Published::Conflict => Err(ApiError::conflict(
            "this is a community template: approve or reject it instead",
        )),
        _ => Err(ApiError::conflict(format!(
            "version {} is not newer than the current one",
            template.version
        ))),
    }
}

/// Retire a template (admins): hidden from the marketplace; installed
/// connectors keep working and its history stays.
#[utoipa::path(delete, path = "/admin/templates/{slug}", tag = "admin", operation_id = "admin_retire_template", params(("slug" = String, Path, description = "The template")),
    responses((status = 403, description = "Needs the admin role `operator` or above"),
              (status = 204, description = "Retired"), (status = 404, description = "No such template")))]
pub(crate) async fn admin_retire_template(
    State(state): State<AppState>,
    Operator(caller): Operator,
    ApiPath(slug): ApiPath<String>,
) -> ApiResult<StatusCode> {
    if !templates::retire(&state.pool, &slug).await? {
        return Err(ApiError::not_found("template"));
    }
    audit(
        &state,
        &caller,
        "template.retired",
        "template",
        Some(&slug),
        json!({}),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

/// The body of an approval.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ApproveBody {
    /// The version that was reviewed: only it becomes installable, whatever
    /// the author publishes later.
    version: String,
}

/// Approve the reviewed version of a community template (admins): that
/// version becomes visible to all and is what others install.
#[utoipa::path(post, path = "/admin/templates/{slug}/approve", tag = "admin", operation_id = "admin_approve_template", params(("slug" = String, Path, description = "The template")),
    request_body(content = ApproveBody, example = json!({"version": "1.0.0"})),
    responses((status = 403, description = "Needs the admin role `operator` or above"),
              (status = 200, description = "Approved: the reviewed version is what workspaces see and install", body = ReviewResult),
              (status = 404, description = "No such template"),
              (status = 422, description = "`version` is missing or not a version of this template")))]
pub(crate) async fn admin_approve_template(
    State(state): State<AppState>,
    Operator(caller): Operator,
    ApiPath(slug): ApiPath<String>,
    ApiJson(body): ApiJson<ApproveBody>,
) -> ApiResult<Json<Value>> {
    let status = match templates::approve(&state.pool, &slug, &body.version).await? {
        Approval::Approved(status) => status,
        Approval::NotFound => return Err(ApiError::not_found("template")),
        Approval::NoSuchVersion => {
            let message = format!("`{slug}` has no version {}", body.version);
            return Err(ApiError::validation(
                format!("version: {message}"),
                json!([{"path": "version", "message": message}]),
            ));
        }
    };
    audit(
        &state,
        &caller,
        "template.approved",
        "template",
        Some(&slug),
        json!({"version": body.version}),
    )
    .await;
    Ok(Json(
        json!({"slug": slug, "review_status": status, "approved_version": body.version}),
    ))
}

/// Reject the version of a community template that awaits review
/// (admins): the version approved before it, if any, stays listed.
#[utoipa::path(post, path = "/admin/templates/{slug}/reject", tag = "admin", operation_id = "admin_reject_template", params(("slug" = String, Path, description = "The template")),
    responses((status = 403, description = "Needs the admin role `operator` or above"),
              (status = 200, description = "Rejected: the newest version; an approved earlier one stays listed", body = ReviewResult),
              (status = 404, description = "No such template"),
              (status = 409, description = "No version awaits review: retire the template to withdraw it")))]
pub(crate) async fn admin_reject_template(
    State(state): State<AppState>,
    Operator(caller): Operator,
    ApiPath(slug): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    let version = match templates::reject(&state.pool, &slug).await? {
        Rejection::Rejected { version } => version,
        Rejection::NotFound => return Err(ApiError::not_found("template")),
        Rejection::NothingPending => {
            return Err(ApiError::conflict(format!(
                "no version of `{slug}` awaits review: retire the template to withdraw it"
            )));
        }
    };
    audit(
        &state,
        &caller,
        "template.rejected",
        "template",
        Some(&slug),
        json!({"version": version}),
    )
    .await;
    Ok(Json(
        json!({"slug": slug, "review_status": ReviewStatus::Rejected}),
    ))
}

async fn feature(
    state: &AppState,
    caller: &Caller,
    slug: &str,
    on: bool,
) -> ApiResult<Json<Value>> {
    if !templates::set_featured(&state.pool, slug, on).await? {
        return Err(ApiError::not_found("template"));
    }
    let action = if on {
        "template.feature"
    } else {
        "template.unfeature"
    };
    audit(state, caller, action, "template", Some(slug), json!({})).await;
    Ok(Json(json!({"slug": slug, "featured": on})))
}

/// Feature a template (admins).
#[utoipa::path(post, path = "/admin/templates/{slug}/feature", tag = "admin", operation_id = "admin_feature_template", params(("slug" = String, Path, description = "The template")),
    responses((status = 403, description = "Needs the admin role `operator` or above"),
              (status = 200, description = "Featured", body = FeatureResult), (status = 404, description = "No such template")))]
pub(crate) async fn admin_feature_template(
    State(state): State<AppState>,
    Operator(caller): Operator,
    ApiPath(slug): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    feature(&state, &caller, &slug, true).await
}

/// Stop featuring a template (admins).
#[utoipa::path(delete, path = "/admin/templates/{slug}/feature", tag = "admin", operation_id = "admin_unfeature_template", params(("slug" = String, Path, description = "The template")),
    responses((status = 403, description = "Needs the admin role `operator` or above"),
              (status = 200, description = "No longer featured", body = FeatureResult), (status = 404, description = "No such template")))]
pub(crate) async fn admin_unfeature_template(
    State(state): State<AppState>,
    Operator(caller): Operator,
    ApiPath(slug): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    feature(&state, &caller, &slug, false).await
}

/// `?window_hours=N`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct WindowQuery {
    /// Window in hours (default 168, at most 8760).
    #[param(minimum = 1, maximum = 8760)]
    window_hours: Option<u32>,
}

/// Installs, executions of installed connectors, success rate and p50/p95
/// duration over a window (admins).
#[utoipa::path(get, path = "/admin/templates/{slug}/metrics", tag = "admin", operation_id = "admin_template_metrics", params(("slug" = String, Path, description = "The template"), WindowQuery),
    responses((status = 403, description = "Needs the admin role `viewer` or above"),
              (status = 200, description = "Installs, executions, success rate and p50/p95 duration", body = TemplateMetricsReport),
              (status = 404, description = "No such template")))]
async fn admin_template_metrics(
    State(state): State<AppState>,
    _admin: Admin,
    ApiPath(slug): ApiPath<String>,
    ApiQuery(q): ApiQuery<WindowQuery>,
) -> ApiResult<Json<Value>> {
    let hours = q.window_hours.unwrap_or(168);
    if hours == 0 || hours > 8760 {
        return Err(ApiError::bad_request(
            "window_hours must be between 1 and 8760",
        ));
    }
    let since = Utc::now() - chrono::Duration::hours(i64::from(hours));
    let metrics = templates::metrics(&state.pool, &slug, since)
        .await?
        .ok_or_else(|| ApiError::not_found("template"))?;
    Ok(Json(
        json!({"slug": slug, "window_hours": hours, "since": since, "metrics": metrics}),
    ))
}
