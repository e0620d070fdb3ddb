//! The admin page (SaaS admins only): queue health, usage per workspace
//! over the last week, every workspace's recent executions with
//! drill-down, the community review queue (pending first, a page at a
//! time) with its actions, every
//! template's metrics over the last 24 hours, and the audit log.

use askama::Template;
use axum::Form;
use axum::extract::{Path, Query, State};
use chrono::Utc;
use conveyor_engine::state::AdminRole;
use conveyor_engine::store::access::{self, AuditFilter};
use conveyor_engine::store::admin as admin_store;
use conveyor_engine::store::history::{self, ExecutionFilter};
use conveyor_engine::store::templates::{self, TemplateFilter};
use conveyor_engine::store::usage as usage_store;
use serde::Deserialize;
use serde_json::json;

use super::executions::{parse_id, show};
use super::session::Session;
use super::{
    Fields, Layout, Nav, PageResult, handler_body, millis_opt, percent, render, see_other, when,
};
use crate::AppState;
use crate::auth::Operator;
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiPath};
use crate::routes::templates::{
    admin_approve_template, admin_feature_template, admin_reject_template, admin_retire_template,
    admin_unfeature_template,
};

/// Community templates the review queue shows at a time.
const REVIEW_PAGE: i64 = 50;

/// Which page of the review queue to show.
#[derive(Debug, Default, Deserialize)]
pub(super) struct AdminQuery {
    /// Templates of the queue skipped.
    #[serde(default)]
    reviews: String,
}

/// One execution of any workspace.
#[derive(Debug)]
struct Execution {
    id: String,
    workspace: String,
    status: String,
    created: String,
}

/// A template in the review table.
#[derive(Debug)]
struct Review {
    slug: String,
    name: String,
    provider: String,
    status: String,
    version: String,
    featured: bool,
    installs: i64,
}

impl Review {
    /// The review actions that change something, as `(action, label)`.
    fn actions(&self) -> Vec<(&'static str, &'static str)> {
        let mut actions = Vec::new();
        if self.status == "pending" || self.status == "rejected" {
            actions.push(("approve", "Approve"));
        }
        if self.status == "pending" {
            actions.push(("reject", "Reject"));
        }
        if self.status == "approved" {
            actions.push(if self.featured {
                ("unfeature", "Unfeature")
            } else {
                ("feature", "Feature")
            });
        }
        if self.status != "retired" {
            actions.push(("retire", "Retire"));
        }
        actions
    }
}

/// One template's metrics over the last 24 hours.
#[derive(Debug)]
struct TemplateStat {
    slug: String,
    name: String,
    source: &'static str,
    status: String,
    installs: i64,
    executions: i64,
    success_rate: String,
    p50: String,
    p95: String,
}

/// One workspace's usage over the last week.
#[derive(Debug, Default)]
struct Usage {
    workspace: String,
    started: i64,
    succeeded: i64,
    failed: i64,
    cancelled: i64,
    steps: i64,
    retries: i64,
}

/// One audit entry.
#[derive(Debug)]
struct Entry {
    at: String,
    workspace: String,
    actor: String,
    action: String,
    object: String,
}

#[derive(Template)]
#[template(path = "console/admin.html")]
struct AdminPage {
    layout: Layout,
    role: String,
    operator: bool,
    stats: Vec<(&'static str, String)>,
    usage: Vec<Usage>,
    executions: Vec<Execution>,
    reviews: Vec<Review>,
    /// The queue's previous and next pages (offsets), when there are some.
    reviews_previous: Option<i64>,
    reviews_next: Option<i64>,
    template_stats: Vec<TemplateStat>,
    audit: Vec<Entry>,
}

/// `GET /console/admin`.
pub(super) async fn page(
    State(state): State<AppState>,
    session: Session,
    Query(q): Query<AdminQuery>,
) -> PageResult {
    let role = session.admin(AdminRole::Viewer)?;
    let offset = match q.reviews.trim() {
        "" => 0,
        text => text
            .parse::<i64>()
            .ok()
            .filter(|o| *o >= 0)
            .ok_or_else(|| ApiError::bad_request("`reviews` must be a whole number, 0 or more"))?,
    };
    let now = Utc::now();
    let s = admin_store::queue_stats(&state.pool, now, now - chrono::Duration::hours(24)).await?;
    let stats = vec![
        ("queued", s.by_status.queued.to_string()),
        ("running", s.by_status.running.to_string()),
        ("succeeded (24 h)", s.by_status.succeeded.to_string()),
        ("failed (24 h)", s.by_status.failed.to_string()),
        ("cancelled (24 h)", s.by_status.cancelled.to_string()),
        ("ready to run", s.queue_depth.to_string()),
        ("scheduled", s.scheduled.to_string()),
        (
            "oldest ready (s)",
            format!("{:.1}", s.oldest_ready_age_seconds),
        ),
        ("workers (last minute)", s.workers_last_minute.to_string()),
    ];
    let mut usage: Vec<Usage> = Vec::new();
    for day in usage_store::daily(&state.pool, None, now - chrono::Duration::days(7), now).await? {
        if usage.last().is_none_or(|u| u.workspace != day.workspace_id) {
            usage.push(Usage {
                workspace: day.workspace_id.clone(),
                ..Usage::default()
            });
        }
        if let Some(u) = usage.last_mut() {
            u.started += day.started;
            u.succeeded += day.succeeded;
            u.failed += day.failed;
            u.cancelled += day.cancelled;
            u.steps += day.steps;
            u.retries += day.retries;
        }
    }
    usage.sort_by_key(|u| std::cmp::Reverse(u.started));
    let filter = ExecutionFilter {
        limit: 25,
        ..ExecutionFilter::default()
    };
    let executions = history::list_executions(&state.pool, &filter)
        .await?
        .into_iter()
        .map(|e| Execution {
            id: e.id.to_string(),
            workspace: e.workspace_id,
            status: e.status.as_str().to_owned(),
            created: when(&e.created_at),
        })
        .collect();
    // Pending first in the query, so none waits behind a page of others.
    let queue = TemplateFilter {
        official: Some(false),
        sort: "name".to_owned(),
        limit: REVIEW_PAGE + 1,
        offset,
        pending_first: true,
        ..TemplateFilter::default()
    };
    let mut queued = templates::list(&state.pool, &queue).await?;
    let reviews_next = (queued.len() > REVIEW_PAGE as usize).then_some(offset + REVIEW_PAGE);
    queued.truncate(REVIEW_PAGE as usize);
    let reviews = queued
        .into_iter()
        .map(|t| Review {
            status: t.review_status.as_str().to_owned(),
            version: t.latest_version,
            slug: t.slug,
            name: t.name,
            provider: t.provider,
            featured: t.featured,
            installs: t.install_count,
        })
        .collect();
    let mut template_stats: Vec<TemplateStat> =
        templates::all_metrics(&state.pool, now - chrono::Duration::hours(24))
            .await?
            .into_iter()
            .map(|t| TemplateStat {
                slug: t.slug,
                name: t.name,
                source: if t.official { "official" } else { "community" },
                status: t.review_status,
                installs: t.metrics.installs,
                executions: t.metrics.executions,
                success_rate: percent(t.metrics.success_rate),
                p50: millis_opt(t.metrics.p50_duration_ms),
                p95: millis_opt(t.metrics.p95_duration_ms),
            })
            .collect();
    // The busiest first; the query returns them by slug, which breaks ties.
    template_stats.sort_by_key(|t| std::cmp::Reverse((t.executions, t.installs)));
    let audit = access::list_audit(
        &state.pool,
        &AuditFilter {
            limit: 25,
            ..AuditFilter::default()
        },
    )
    .await?
    .into_iter()
    .map(|a| Entry {
        at: when(&a.at),
        workspace: a.workspace_id.unwrap_or_else(|| "—".to_owned()),
        actor: a.actor,
        action: a.action,
        object: format!("{} {}", a.object_type, a.object_id.unwrap_or_default()),
    })
    .collect();
    render(&AdminPage {
        layout: session.layout("Admin", Nav::Admin),
        role: role.to_string(),
        operator: role.covers(AdminRole::Operator),
        stats,
        usage,
        executions,
        reviews,
        reviews_previous: (offset > 0).then(|| (offset - REVIEW_PAGE).max(0)),
        reviews_next,
        template_stats,
        audit,
    })
}

/// `GET /console/admin/executions/{id}`: any workspace's execution.
pub(super) async fn execution(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<String>,
) -> PageResult {
    session.admin(AdminRole::Viewer)?;
    let id = parse_id(&id, "execution")?;
    let located = history::locate(&state.pool, id)
        .await?
        .ok_or_else(|| ApiError::not_found("execution"))?;
    show(&state, &session, &located.workspace_id, id, false).await
}

/// `POST /console/admin/templates/{slug}/{action}`: approve (the version
/// the form names), reject, feature, unfeature or retire.
pub(super) async fn review(
    State(state): State<AppState>,
    session: Session,
    Path((slug, action)): Path<(String, String)>,
    Form(form): Form<Fields>,
) -> PageResult {
    session.check(&form)?;
    session.admin(AdminRole::Operator)?;
    let operator = Operator(session.caller.clone());
    let (state, path) = (State(state), ApiPath(slug));
    match action.as_str() {
        "approve" => {
            let body = handler_body(&json!({"version": form.get("version").unwrap_or_default()}))?;
            drop(admin_approve_template(state, operator, path, ApiJson(body)).await?);
        }
        "reject" => drop(admin_reject_template(state, operator, path).await?),
        "feature" => drop(admin_feature_template(state, operator, path).await?),
        "unfeature" => drop(admin_unfeature_template(state, operator, path).await?),
        "retire" => drop(admin_retire_template(state, operator, path).await?),
        _ => return Err(ApiError::not_found("action").into()),
    }
    see_other("/console/admin")
}
