//! The marketplace: templates (official ones synced from `templates/`,
//! community ones submitted by workspaces), their immutable versions,
//! installs and ratings.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use crate::Result;
use crate::connector::Connector;
use crate::marketplace::{Template, parse_version};
use crate::state::ReviewStatus;

/// A template as the marketplace lists it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TemplateSummary {
    /// Unique id.
    pub slug: String,
    /// Display name.
    pub name: String,
    /// What it does.
    pub description: String,
    /// Category.
    pub category: String,
    /// Third party.
    pub provider: String,
    /// Provider API documentation.
    pub docs_url: Option<String>,
    /// Shipped with Conveyor.
    pub official: bool,
    /// Where its newest version is in review; `approved` for workspaces
    /// other than its author, which see only the approved version.
    pub review_status: ReviewStatus,
    /// Featured by an admin.
    pub featured: bool,
    /// Newest version; for workspaces other than its author, the
    /// approved one.
    pub latest_version: String,
    /// The version an admin approved (official templates: the newest);
    /// what other workspaces see and install.
    pub approved_version: Option<String>,
    /// Installs so far.
    pub install_count: i64,
    /// Average stars, when rated.
    pub rating_average: Option<f64>,
    /// Number of ratings.
    pub rating_count: i64,
    /// First published.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

/// What [`sync_official`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Templates seen for the first time.
    pub inserted: usize,
    /// Templates that got a new version.
    pub updated: usize,
}

/// Inserts new official templates and new versions of known ones; never
/// deletes anything, and never moves a template back to an older version.
///
/// # Errors
///
/// Database errors.
pub async fn sync_official(pool: &PgPool, templates: &[Template]) -> Result<SyncReport> {
    let mut report = SyncReport::default();
    for t in templates {
        match publish(pool, t, true, None, ReviewStatus::Approved).await? {
            Published::Inserted => report.inserted += 1,
            Published::NewVersion => report.updated += 1,
            Published::Unchanged | Published::Conflict => {}
        }
    }
    Ok(report)
}

/// The outcome of [`publish`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    /// A new template.
    Inserted,
    /// A newer version of an existing template.
    NewVersion,
    /// This version (or a newer one) is already there.
    Unchanged,
    /// The slug belongs to another publisher (official vs community, or
    /// another workspace).
    Conflict,
}

/// Publishes `t` as a new template or a new version. Official templates
/// and a workspace's community templates never overwrite each other.
///
/// # Errors
///
/// Database errors.
pub async fn publish(
    pool: &PgPool,
    t: &Template,
    official: bool,
    workspace_id: Option<&str>,
    review_status: ReviewStatus,
) -> Result<Published> {
    let definition = serde_json::to_value(t).unwrap_or(Value::Null);
    let mut tx = pool.begin().await?;
    if let Some(ws) = workspace_id {
        super::ensure_workspace(&mut *tx, ws).await?;
    }
    let existing = sqlx::query!(
        "SELECT official, submitted_by_workspace, latest_version FROM connector_templates WHERE slug = $1 FOR UPDATE",
        t.slug
    )
    .fetch_optional(&mut *tx)
    .await?;
    let outcome = match existing {
        None => {
            sqlx::query!(
                "INSERT INTO connector_templates (slug, name, description, category, provider, docs_url, official,
                     review_status, submitted_by_workspace, latest_version, approved_version)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, CASE WHEN $8 = 'approved' THEN $10 END)",
                t.slug,
                t.name,
                t.description,
                t.category,
                t.provider,
                t.docs_url,
                official,
                review_status.as_str(),
                workspace_id,
                t.version
            )
            .execute(&mut *tx)
            .await?;
            Published::Inserted
        }
        Some(row)
            if row.official != official
                || row.submitted_by_workspace.as_deref() != workspace_id =>
        {
            Published::Conflict
        }
        Some(row) if parse_version(&t.version) <= parse_version(&row.latest_version) => {
            Published::Unchanged
        }
        Some(_) => {
            sqlx::query!(
                "UPDATE connector_templates SET name = $2, description = $3, category = $4, provider = $5,
                     docs_url = $6, latest_version = $7, review_status = $8, updated_at = now(),
                     approved_version = CASE WHEN $8 = 'approved' THEN $7 ELSE approved_version END
                 WHERE slug = $1",
                t.slug,
                t.name,
                t.description,
                t.category,
                t.provider,
                t.docs_url,
                t.version,
                review_status.as_str()
            )
            .execute(&mut *tx)
            .await?;
            Published::NewVersion
        }
    };
    if matches!(outcome, Published::Inserted | Published::NewVersion) {
        sqlx::query!(
            "INSERT INTO connector_template_versions (slug, version, definition) VALUES ($1, $2, $3)
             ON CONFLICT (slug, version) DO NOTHING",
            t.slug,
            t.version,
            definition
        )
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(outcome)
}

/// Marketplace listing filters.
#[derive(Debug, Clone, Default)]
pub struct TemplateFilter {
    /// The caller's workspace: sees approved templates and its own
    /// submissions; `None` (admins) sees everything.
    pub viewer: Option<String>,
    /// Text searched in name, description, provider and slug.
    pub q: Option<String>,
    /// Only this category.
    pub category: Option<String>,
    /// Only official (`true`) or community (`false`) templates.
    pub official: Option<bool>,
    /// Only featured ones.
    pub featured: Option<bool>,
    /// `installs`, `rating` or `name`.
    pub sort: String,
    /// Page size.
    pub limit: i64,
    /// Rows to skip.
    pub offset: i64,
    /// Only this provider, compared case-insensitively (the console's
    /// marketplace filter).
    pub provider: Option<String>,
    /// Templates whose newest version awaits review before all others
    /// (the console's review queue).
    pub pending_first: bool,
}

/// Lists templates: filtered, ordered and paged in the query, so no page
/// hides a template behind a cap.
///
/// # Errors
///
/// Database errors.
pub async fn list(pool: &PgPool, f: &TemplateFilter) -> Result<Vec<TemplateSummary>> {
    let pattern = f.q.as_ref().map(|q| {
        format!(
            "%{}%",
            q.replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_")
        )
    });
    // Workspaces see the approved version's row (its metadata, number and
    // review); only its author and admins see the newest, which may await
    // review. See `get`.
    Ok(sqlx::query_as!(
        TemplateSummary,
        r#"SELECT t.slug, v.definition->>'name' AS "name!", v.definition->>'description' AS "description!",
                  v.definition->>'category' AS "category!", v.definition->>'provider' AS "provider!",
                  v.definition->>'docs_url' AS docs_url, t.official,
                  CASE WHEN s.own THEN t.review_status ELSE 'approved' END AS "review_status!: ReviewStatus",
                  t.featured, CASE WHEN s.own THEN t.latest_version ELSE t.approved_version END AS "latest_version!",
                  t.approved_version, t.install_count,
                  r.average AS rating_average, COALESCE(r.count, 0) AS "rating_count!",
                  t.created_at, t.updated_at
           FROM connector_templates t
           CROSS JOIN LATERAL (SELECT $1::text IS NULL OR t.submitted_by_workspace IS NOT DISTINCT FROM $1 AS own) s
           JOIN connector_template_versions v ON v.slug = t.slug AND v.version =
               CASE WHEN $1::text IS NULL THEN t.latest_version
                    ELSE COALESCE(t.approved_version, t.latest_version) END
           LEFT JOIN LATERAL (SELECT avg(stars)::float8 AS average, count(*) AS count
                              FROM connector_template_ratings WHERE slug = t.slug) r ON true
           WHERE ($1::text IS NULL
                  OR (t.review_status <> 'retired' AND (t.approved_version IS NOT NULL OR s.own)))
             AND ($2::text IS NULL OR v.definition->>'name' ILIKE $2 OR v.definition->>'description' ILIKE $2
                  OR v.definition->>'provider' ILIKE $2 OR t.slug ILIKE $2)
             AND ($3::text IS NULL OR v.definition->>'category' = $3)
             AND ($4::bool IS NULL OR t.official = $4)
             AND ($5::bool IS NULL OR t.featured = $5)
             AND ($9::text IS NULL OR lower(v.definition->>'provider') = lower($9))
           ORDER BY
             CASE WHEN $10 THEN t.review_status <> 'pending' END,
             CASE WHEN $6 = 'installs' THEN t.install_count END DESC NULLS LAST,
             CASE WHEN $6 = 'rating' THEN r.average END DESC NULLS LAST,
             v.definition->>'name', t.slug
           LIMIT $7 OFFSET $8"#,
        f.viewer,
        pattern,
        f.category,
        f.official,
        f.featured,
        f.sort,
        f.limit,
        f.offset,
        f.provider,
        f.pending_first,
    )
    .fetch_all(pool)
    .await?)
}

/// One template visible to `viewer` (`None`: admins see all), with a
/// definition, in one query. Admins see the newest version. Workspaces
/// see the approved version, its metadata and definition, as long as the
/// template is not retired; its author also sees the newest version's
/// number and review status, and, while none is approved, the newest
/// version itself. A version awaiting review thus never hides the one
/// approved before it, and no other workspace learns of it.
///
/// # Errors
///
/// Database errors.
pub async fn get(
    pool: &PgPool,
    slug: &str,
    viewer: Option<&str>,
) -> Result<Option<(TemplateSummary, Value)>> {
    let row = sqlx::query!(
        r#"SELECT t.slug, v.definition->>'name' AS "name!", v.definition->>'description' AS "description!",
                  v.definition->>'category' AS "category!", v.definition->>'provider' AS "provider!",
                  v.definition->>'docs_url' AS docs_url, t.official,
                  CASE WHEN s.own THEN t.review_status ELSE 'approved' END AS "review_status!: ReviewStatus",
                  t.featured, CASE WHEN s.own THEN t.latest_version ELSE t.approved_version END AS "latest_version!",
                  t.approved_version, t.install_count,
                  r.average AS rating_average, COALESCE(r.count, 0) AS "rating_count!",
                  t.created_at, t.updated_at, v.definition
           FROM connector_templates t
           CROSS JOIN LATERAL (SELECT $2::text IS NULL OR t.submitted_by_workspace IS NOT DISTINCT FROM $2 AS own) s
           JOIN connector_template_versions v ON v.slug = t.slug AND v.version =
               CASE WHEN $2::text IS NULL THEN t.latest_version
                    ELSE COALESCE(t.approved_version, t.latest_version) END
           LEFT JOIN LATERAL (SELECT avg(stars)::float8 AS average, count(*) AS count
                              FROM connector_template_ratings WHERE slug = t.slug) r ON true
           WHERE t.slug = $1
             AND ($2::text IS NULL
                  OR (t.review_status <> 'retired' AND (t.approved_version IS NOT NULL OR s.own)))"#,
        slug,
        viewer
    )
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|r| {
        (
            TemplateSummary {
                slug: r.slug,
                name: r.name,
                description: r.description,
                category: r.category,
                provider: r.provider,
                docs_url: r.docs_url,
                official: r.official,
                review_status: r.review_status,
                featured: r.featured,
                latest_version: r.latest_version,
                approved_version: r.approved_version,
                install_count: r.install_count,
                rating_average: r.rating_average,
                rating_count: r.rating_count,
                created_at: r.created_at,
                updated_at: r.updated_at,
            },
            r.definition,
        )
    }))
}

/// What [`approve`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Approval {
    /// The version is approved; the template's review status is now this:
    /// `pending` or `rejected` when a newer version awaits review or was
    /// rejected.
    Approved(ReviewStatus),
    /// No such template.
    NotFound,
    /// The template has no such version.
    NoSuchVersion,
}

/// Approves `version` of a template: that version, the one reviewed, is
/// what other workspaces see and install, whatever is published later.
/// The review status, which describes the newest version, becomes
/// `approved` unless a newer version than this one awaits review or was
/// rejected.
///
/// # Errors
///
/// Database errors.
pub async fn approve(pool: &PgPool, slug: &str, version: &str) -> Result<Approval> {
    let status = sqlx::query_scalar!(
        r#"UPDATE connector_templates SET approved_version = $2, updated_at = now(),
               review_status = CASE WHEN $2 = latest_version OR review_status IN ('approved', 'retired')
                                    THEN 'approved' ELSE review_status END
           WHERE slug = $1
             AND EXISTS (SELECT 1 FROM connector_template_versions WHERE slug = $1 AND version = $2)
           RETURNING review_status AS "review_status: ReviewStatus""#,
        slug,
        version
    )
    .fetch_optional(pool)
    .await?;
    Ok(match status {
        Some(status) => Approval::Approved(status),
        None if exists(pool, slug).await? => Approval::NoSuchVersion,
        None => Approval::NotFound,
    })
}

/// A stored template version.
///
/// # Errors
///
/// Database errors.
pub async fn version(pool: &PgPool, slug: &str, version: &str) -> Result<Option<Value>> {
    Ok(sqlx::query_scalar!(
        "SELECT definition FROM connector_template_versions WHERE slug = $1 AND version = $2",
        slug,
        version
    )
    .fetch_optional(pool)
    .await?)
}

/// Creates a connector installed from `slug`@`version` and counts the
/// install, in one transaction.
///
/// # Errors
///
/// Database errors.
pub async fn install(
    pool: &PgPool,
    workspace_id: &str,
    slug: &str,
    version: &str,
    connector: &Connector,
) -> Result<(Uuid, i32)> {
    let mut tx = pool.begin().await?;
    let id =
        super::connectors::insert(&mut tx, workspace_id, connector, Some((slug, version))).await?;
    sqlx::query!(
        "UPDATE connector_templates SET install_count = install_count + 1 WHERE slug = $1",
        slug
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok((id, 1))
}

/// Stores the upgraded definition as a new connector version and records
/// the template version it came from; `None` when the connector is gone.
///
/// # Errors
///
/// Database errors.
pub async fn upgrade(
    pool: &PgPool,
    workspace_id: &str,
    id: Uuid,
    template_version: &str,
    connector: &Connector,
) -> Result<Option<i32>> {
    let mut tx = pool.begin().await?;
    let version = super::connectors::add_version(
        &mut tx,
        workspace_id,
        id,
        connector,
        Some(template_version),
    )
    .await?;
    tx.commit().await?;
    Ok(version)
}

/// Rates a template for a workspace (re-rating replaces the rating).
///
/// # Errors
///
/// Database errors.
pub async fn rate(
    pool: &PgPool,
    slug: &str,
    workspace_id: &str,
    stars: i16,
    review: Option<&str>,
) -> Result<()> {
    let mut tx = pool.begin().await?;
    super::ensure_workspace(&mut *tx, workspace_id).await?;
    sqlx::query!(
        "INSERT INTO connector_template_ratings (slug, workspace_id, stars, review) VALUES ($1, $2, $3, $4)
         ON CONFLICT (slug, workspace_id) DO UPDATE SET stars = EXCLUDED.stars, review = EXCLUDED.review, updated_at = now()",
        slug,
        workspace_id,
        stars,
        review
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// What [`reject`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// This newest version is rejected.
    Rejected {
        /// The version rejected.
        version: String,
    },
    /// No such template.
    NotFound,
    /// No version awaits review.
    NothingPending,
}

/// Rejects the version of a template that awaits review (its newest).
/// Only a pending version can be rejected: a template already reviewed is
/// withdrawn by [`retire`], so a rejection never takes down a version
/// other workspaces use.
///
/// # Errors
///
/// Database errors.
pub async fn reject(pool: &PgPool, slug: &str) -> Result<Rejection> {
    let rejected = sqlx::query_scalar!(
        "UPDATE connector_templates SET review_status = 'rejected', updated_at = now()
         WHERE slug = $1 AND review_status = 'pending'
         RETURNING latest_version",
        slug
    )
    .fetch_optional(pool)
    .await?;
    Ok(match rejected {
        Some(version) => Rejection::Rejected { version },
        None if exists(pool, slug).await? => Rejection::NothingPending,
        None => Rejection::NotFound,
    })
}

/// Retires a template: hidden from every workspace, installed copies keep
/// working; whether it exists.
///
/// # Errors
///
/// Database errors.
pub async fn retire(pool: &PgPool, slug: &str) -> Result<bool> {
    let done = sqlx::query!(
        "UPDATE connector_templates SET review_status = 'retired', updated_at = now() WHERE slug = $1",
        slug
    )
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Whether template `slug` exists.
async fn exists(pool: &PgPool, slug: &str) -> Result<bool> {
    Ok(sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM connector_templates WHERE slug = $1) AS "exists!""#,
        slug
    )
    .fetch_one(pool)
    .await?)
}

/// Features or unfeatures a template; whether it exists.
///
/// # Errors
///
/// Database errors.
pub async fn set_featured(pool: &PgPool, slug: &str, featured: bool) -> Result<bool> {
    let done = sqlx::query!(
        "UPDATE connector_templates SET featured = $2, updated_at = now() WHERE slug = $1",
        slug,
        featured
    )
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// How a template performs across the workspaces that installed it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TemplateMetrics {
    /// Installs so far.
    pub installs: i64,
    /// Executions of installed connectors created in the window.
    pub executions: i64,
    /// Succeeded / (succeeded + failed) in the window.
    pub success_rate: Option<f64>,
    /// Median duration, ms.
    pub p50_duration_ms: Option<f64>,
    /// 95th percentile duration, ms.
    pub p95_duration_ms: Option<f64>,
}

/// A template's [`TemplateMetrics`], with what names it.
#[derive(Debug, Clone, Serialize)]
pub struct TemplateMetricsRow {
    /// The template.
    pub slug: String,
    /// Display name.
    pub name: String,
    /// Shipped with Conveyor (else submitted by a workspace).
    pub official: bool,
    /// `pending`, `approved`, `rejected` or `retired`.
    pub review_status: String,
    /// Its metrics.
    pub metrics: TemplateMetrics,
}

/// Metrics of a template's installed connectors since `since`.
///
/// # Errors
///
/// Database errors.
pub async fn metrics(
    pool: &PgPool,
    slug: &str,
    since: DateTime<Utc>,
) -> Result<Option<TemplateMetrics>> {
    Ok(metrics_of(pool, Some(slug), since)
        .await?
        .into_iter()
        .next()
        .map(|row| row.metrics))
}

/// [`metrics()`] of every template, by slug, in one query.
///
/// # Errors
///
/// Database errors.
pub async fn all_metrics(pool: &PgPool, since: DateTime<Utc>) -> Result<Vec<TemplateMetricsRow>> {
    metrics_of(pool, None, since).await
}

/// The metrics of template `slug`, or of all when `None`; one definition
/// for both.
async fn metrics_of(
    pool: &PgPool,
    slug: Option<&str>,
    since: DateTime<Utc>,
) -> Result<Vec<TemplateMetricsRow>> {
    let rows = sqlx::query!(
        r#"SELECT t.slug, t.name, t.official, t.review_status, t.install_count,
                  count(e.id) AS "executions!",
                  count(e.id) FILTER (WHERE e.status = 'succeeded')::float8
                      / NULLIF(count(e.id) FILTER (WHERE e.status IN ('succeeded', 'failed')), 0) AS success_rate,
                  percentile_cont(0.5) WITHIN GROUP (ORDER BY EXTRACT(EPOCH FROM e.finished_at - e.started_at) * 1000)
                      FILTER (WHERE e.finished_at IS NOT NULL) AS p50,
                  percentile_cont(0.95) WITHIN GROUP (ORDER BY EXTRACT(EPOCH FROM e.finished_at - e.started_at) * 1000)
                      FILTER (WHERE e.finished_at IS NOT NULL) AS p95
           FROM connector_templates t
           LEFT JOIN connectors c ON c.template_slug = t.slug
           LEFT JOIN connector_executions e ON e.connector_id = c.id AND e.created_at >= $2
           WHERE $1::text IS NULL OR t.slug = $1
           GROUP BY t.slug
           ORDER BY t.slug"#,
        slug,
        since
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| TemplateMetricsRow {
            slug: r.slug,
            name: r.name,
            official: r.official,
            review_status: r.review_status,
            metrics: TemplateMetrics {
                installs: r.install_count,
                executions: r.executions,
                success_rate: r.success_rate,
                p50_duration_ms: r.p50,
                p95_duration_ms: r.p95,
            },
        })
        .collect())
}
