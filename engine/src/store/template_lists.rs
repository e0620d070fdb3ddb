//! The template lists of the web console: the marketplace filtered by
//! provider, and the admins' review queue with pending templates first.
//! Both filter and order in the query, so paging with `LIMIT`/`OFFSET`
//! never hides a template behind the first page (the JSON API's list is
//! [`templates::list`](super::templates::list)).

use sqlx::PgPool;

use super::templates::{TemplateFilter, TemplateSummary};
use crate::Result;
use crate::state::ReviewStatus;

/// A console list: the API's filters plus what only the console asks for.
#[derive(Debug, Clone, Default)]
pub struct ConsoleFilter {
    /// Visibility, text, category, source, sort, page size and offset.
    pub filter: TemplateFilter,
    /// Only this provider (compared case-insensitively).
    pub provider: Option<String>,
    /// Pending templates before all others (the review queue).
    pub pending_first: bool,
}

/// Lists templates as [`templates::list`](super::templates::list) does,
/// also filtered by provider and, when asked, pending ones first.
///
/// # Errors
///
/// Database errors.
pub async fn list(pool: &PgPool, f: &ConsoleFilter) -> Result<Vec<TemplateSummary>> {
    let base = &f.filter;
    let pattern = base.q.as_ref().map(|q| {
        format!(
            "%{}%",
            q.replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_")
        )
    });
    Ok(sqlx::query_as!(
        TemplateSummary,
        r#"SELECT t.slug, t.name, t.description, t.category, t.provider, t.docs_url, t.official,
                  t.review_status AS "review_status: ReviewStatus",
                  t.featured, t.latest_version, t.approved_version, t.install_count,
                  r.average AS rating_average, COALESCE(r.count, 0) AS "rating_count!",
                  t.created_at, t.updated_at
           FROM connector_templates t
           LEFT JOIN LATERAL (SELECT avg(stars)::float8 AS average, count(*) AS count
                              FROM connector_template_ratings WHERE slug = t.slug) r ON true
           WHERE ($1::text IS NULL
                  OR (t.review_status = 'approved')
                  OR (t.submitted_by_workspace = $1 AND t.review_status <> 'retired'))
             AND ($2::text IS NULL OR t.name ILIKE $2 OR t.description ILIKE $2 OR t.provider ILIKE $2 OR t.slug ILIKE $2)
             AND ($3::text IS NULL OR t.category = $3)
             AND ($4::bool IS NULL OR t.official = $4)
             AND ($5::bool IS NULL OR t.featured = $5)
             AND ($9::text IS NULL OR lower(t.provider) = lower($9))
           ORDER BY
             CASE WHEN $10 THEN t.review_status <> 'pending' END,
             CASE WHEN $6 = 'installs' THEN t.install_count END DESC NULLS LAST,
             CASE WHEN $6 = 'rating' THEN r.average END DESC NULLS LAST,
             t.name, t.slug
           LIMIT $7 OFFSET $8"#,
        base.viewer,
        pattern,
        base.category,
        base.official,
        base.featured,
        base.sort,
        base.limit,
        base.offset,
        f.provider,
        f.pending_first,
    )
    .fetch_all(pool)
    .await?)
}
