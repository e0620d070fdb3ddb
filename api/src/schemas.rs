//! Response bodies as the OpenAPI document describes them.
//!
//! Rows come from the engine's own types (their `ToSchema` derives live
//! next to their `Serialize` derives); the envelopes the handlers wrap them
//! in are described here. `scripts/contract` checks every response the API
//! sends against these schemas, so a handler that drifts from them fails
//! the test suite.

use chrono::{DateTime, Utc};
use conveyor_engine::connector::Connector;
use conveyor_engine::flow::WaitingFor;
use conveyor_engine::marketplace::Template;
use conveyor_engine::store::access::{ApiKeyMeta, AuditRow};
use conveyor_engine::store::admin::{ConnectorUsage, DailyUsage, QueueStats};
use conveyor_engine::store::connectors::ConnectorSummary;
use conveyor_engine::store::credentials::CredentialMeta;
use conveyor_engine::store::executions::StepRow;
use conveyor_engine::store::history::{ConnectorStats, EventRow, ExecutionView};
use conveyor_engine::store::templates::{TemplateMetrics, TemplateSummary};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

/// `GET /connectors`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConnectorList {
    /// The workspace's live connectors, newest first.
    pub items: Vec<ConnectorSummary>,
}

/// A connector version that was just stored.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConnectorVersionRef {
    /// The connector.
    pub id: Uuid,
    /// The version stored (1 for a new connector).
    #[schema(minimum = 1)]
    pub version: i32,
}

/// One version of a connector.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConnectorDetail {
    /// The connector.
    pub id: Uuid,
    /// This version.
    #[schema(minimum = 1)]
    pub version: i32,
    /// The newest version.
    #[schema(minimum = 1)]
    pub latest_version: i32,
    /// This version's definition.
    pub definition: Connector,
    /// When the connector was created.
    pub created_at: DateTime<Utc>,
    /// When it was deleted (its history stays readable).
    pub deleted_at: Option<DateTime<Utc>>,
    /// The template it was installed from.
    pub template_slug: Option<String>,
    /// The template version its latest version came from.
    pub template_version: Option<String>,
    /// Installed connectors only: the newer template version available,
    /// or null when current.
    pub update_available: Option<String>,
}

/// A connector moved to another template version (install, upgrade).
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InstalledConnector {
    /// The connector.
    pub id: Uuid,
    /// Its new version.
    #[schema(minimum = 1)]
    pub version: i32,
    /// The template.
    pub template_slug: String,
    /// The template version it now runs.
    pub template_version: String,
}

/// A connector's executions over a window.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConnectorStatsReport {
    /// The connector.
    pub connector_id: Uuid,
    /// The window, in hours back from now.
    pub window_hours: u32,
    /// The window's start.
    pub since: DateTime<Utc>,
    /// Counts, success rate and durations.
    pub stats: ConnectorStats,
}

/// Executions enqueued by a batch.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchAccepted {
    /// One execution per item, in item order (an existing one for a
    /// repeated idempotency key).
    pub ids: Vec<Uuid>,
}

/// One page of executions, newest first.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecutionPage {
    /// The executions.
    pub items: Vec<ExecutionView>,
    /// Pass as `cursor` for the next page; null on the last one.
    pub next_cursor: Option<String>,
}

/// An execution with every attempt of every step.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExecutionDetail {
    /// The execution.
    #[serde(flatten)]
    pub execution: ExecutionView,
    /// Every attempt of every step so far (requests redacted).
    pub steps: Vec<StepRow>,
    /// While queued: why it is not running yet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<WaitingFor>,
}

/// What a cancel did.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelResult {
    /// The execution.
    pub id: Uuid,
    /// Its status after the call (`cancelled`, `running` while the request
    /// is pending, or the final status it already had).
    pub status: String,
    /// What happened, for people.
    pub message: String,
}

/// An execution's stored event log (`?format=json`).
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EventList {
    /// Every stored event, oldest first.
    pub items: Vec<EventRow>,
}

/// One Server-Sent Event of `GET /executions/{id}/events`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExecutionEvent {
    /// The kind: a stored event's (`enqueued`, `claimed`, `step_started`,
    /// `step_finished`, `retry_scheduled`, `lease_lost`, `released`,
    /// `parked`, `cancel_requested`, `cancelled`, `finished`), `status` on each status
    /// change, or `error` when the stream stops early.
    pub event: String,
    /// A stored event's sequence number.
    pub id: Option<String>,
    /// JSON text: the stored event row; for `status`, `{id, status, output,
    /// error}`; for `error`, `{message}`.
    pub data: String,
}

/// `GET /credentials`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CredentialList {
    /// Metadata of every credential, by name.
    pub items: Vec<CredentialMeta>,
}

/// A new API key: the only response that ever contains it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyCreated {
    /// Key id.
    pub id: Uuid,
    /// Its label.
    pub name: String,
    /// Its first characters, shown in listings.
    pub prefix: String,
    /// The key (`cvk_...`): use it as `Authorization: Bearer <key>`.
    #[schema(pattern = "^cvk_")]
    pub key: String,
    /// The user who created it.
    pub created_by: String,
    /// When.
    pub created_at: DateTime<Utc>,
    /// What it may do: `read`, `execute`, `manage`.
    pub scopes: Vec<String>,
    /// When it stops working; null: never.
    pub expires_at: Option<DateTime<Utc>>,
}

/// `GET /api-keys`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyList {
    /// Every key, newest first, revoked ones included.
    pub items: Vec<ApiKeyMeta>,
}

/// `GET /admin/workspaces/{id}/members`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MemberList {
    /// Every member, in user id order.
    pub items: Vec<conveyor_engine::store::members::Member>,
}

/// One page of the audit log, newest first.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditPage {
    /// The entries.
    pub items: Vec<AuditRow>,
    /// Pass as `before_id` for the next page; null on the last one.
    pub next_before_id: Option<i64>,
}

/// One page of templates.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TemplatePage {
    /// The templates.
    pub items: Vec<TemplateSummary>,
    /// Pass as `offset` for the next page; null on the last one.
    pub next_offset: Option<i64>,
}

/// A template with its latest definition.
#[derive(Debug, Serialize, ToSchema)]
pub struct TemplateDetail {
    /// Marketplace metadata.
    #[serde(flatten)]
    pub summary: TemplateSummary,
    /// The approved version's definition (its author's, while none is
    /// approved: the newest).
    pub template: Template,
}

/// A template's ratings after a new one.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RatingResult {
    /// The template.
    pub slug: String,
    /// Average stars.
    pub rating_average: Option<f64>,
    /// Number of ratings.
    pub rating_count: i64,
}

/// A community template submitted for review.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TemplateSubmitted {
    /// The template.
    pub slug: String,
    /// Its version.
    pub version: String,
    /// Always `pending` until an admin reviews it.
    pub review_status: String,
}

/// A template version published by an admin.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TemplateVersionRef {
    /// The template.
    pub slug: String,
    /// The version published.
    pub version: String,
}

/// A template's new review status.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReviewResult {
    /// The template.
    pub slug: String,
    /// The review status of the template's newest version: `rejected`;
    /// on approval `approved`, or `pending`/`rejected` when a version
    /// newer than the approved one awaits review or was rejected.
    pub review_status: String,
    /// On approval: the reviewed version, the one workspaces see and
    /// install.
    pub approved_version: Option<String>,
}

/// Whether a template is featured now.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FeatureResult {
    /// The template.
    pub slug: String,
    /// Featured or not.
    pub featured: bool,
}

/// How a template's connectors perform over a window.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TemplateMetricsReport {
    /// The template.
    pub slug: String,
    /// The window, in hours back from now.
    pub window_hours: u32,
    /// The window's start.
    pub since: DateTime<Utc>,
    /// The figures.
    pub metrics: TemplateMetrics,
}

/// Queue health across workspaces.
#[derive(Debug, Serialize, ToSchema)]
pub struct AdminStats {
    /// The figures.
    #[serde(flatten)]
    pub stats: QueueStats,
    /// When they were read.
    pub at: DateTime<Utc>,
    /// The window of the finished counts, in hours.
    pub window_hours: u32,
    /// The window's start.
    pub finished_since: DateTime<Utc>,
}

/// One workspace's usage over a number of days.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkspaceUsage {
    /// The workspace.
    pub workspace_id: String,
    /// Days counted, today included.
    pub days: u32,
    /// Start of the first day (UTC midnight).
    pub since: DateTime<Utc>,
    /// Executions created in the window.
    pub total: i64,
    /// Of which succeeded.
    pub succeeded: i64,
    /// Of which failed.
    pub failed: i64,
    /// failed / (succeeded + failed), or null when none finished that way.
    pub failure_rate: Option<f64>,
    /// Every day of the window, zeros included.
    pub per_day: Vec<DailyUsage>,
    /// Per connector, most used first.
    pub per_connector: Vec<ConnectorUsage>,
}

/// A community template as `POST /templates` takes it: the official Slack
/// template under a slug of its own (the document's request example).
pub fn template_example() -> serde_json::Value {
    let mut template: serde_json::Value =
        serde_json::from_str(include_str!("../../templates/slack-post-message.json"))
            .unwrap_or_default();
    template["slug"] = "acme-slack-alert".into();
    template["name"] = "Post an alert to Slack".into();
    template
}
