//! Usage metering: a workspace's own usage, and every workspace's for
//! admins, per UTC day.

use axum::Json;
use axum::extract::State;
use chrono::{Days, NaiveDate, NaiveTime, Utc};
use conveyor_engine::store::usage::{self, UsageDay};
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::auth::{Admin, Caller};
use crate::error::{ApiError, ApiResult};
use crate::extract::ApiQuery;

/// Default window, in days, ending today.
const DEFAULT_DAYS: u64 = 30;
/// Longest window, in days.
const MAX_DAYS: u64 = 366;

/// This group's routes.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(workspace_usage))
        .routes(routes!(admin_usage))
}

/// `?from=&to=`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct UsageQuery {
    /// First UTC day (`YYYY-MM-DD`; default 29 days before `to`).
    #[serde(default, deserialize_with = "crate::extract::bounded")]
    from: Option<NaiveDate>,
    /// Last UTC day, included (`YYYY-MM-DD`; default today).
    #[serde(default, deserialize_with = "crate::extract::bounded")]
    to: Option<NaiveDate>,
}

/// `?from=&to=&workspace_id=`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct AdminUsageQuery {
    /// First UTC day (`YYYY-MM-DD`; default 29 days before `to`).
    #[serde(default, deserialize_with = "crate::extract::bounded")]
    from: Option<NaiveDate>,
    /// Last UTC day, included (`YYYY-MM-DD`; default today).
    #[serde(default, deserialize_with = "crate::extract::bounded")]
    to: Option<NaiveDate>,
    /// Only this workspace.
    workspace_id: Option<String>,
}

/// The window's days, first and last included; 400 naming the field when
/// it is reversed or longer than [`MAX_DAYS`]. The days read are within
/// [`crate::extract::YEARS`]; the arithmetic is checked all the same, as
/// chrono's panics at its ends.
fn window(from: Option<NaiveDate>, to: Option<NaiveDate>) -> ApiResult<(NaiveDate, NaiveDate)> {
    let to = to.unwrap_or_else(|| Utc::now().date_naive());
    let from = match from {
        Some(from) => from,
        None => to
            .checked_sub_days(Days::new(DEFAULT_DAYS - 1))
            .ok_or_else(to_out_of_range)?,
    };
    if from > to {
        return Err(ApiError::bad_request("`from` must not be after `to`"));
    }
    let earliest = to
        .checked_sub_days(Days::new(MAX_DAYS - 1))
        .ok_or_else(to_out_of_range)?;
    if earliest > from {
        return Err(ApiError::bad_request(format!(
            "`from` must be at most {MAX_DAYS} days before `to`"
        )));
    }
    Ok((from, to))
}

fn to_out_of_range() -> ApiError {
    ApiError::bad_request("`to` is out of range")
}

async fn read(
    state: &AppState,
    workspace_id: Option<&str>,
    (from, to): (NaiveDate, NaiveDate),
) -> ApiResult<Vec<UsageDay>> {
    let start = from.and_time(NaiveTime::MIN).and_utc();
    let after = to
        .checked_add_days(Days::new(1))
        .ok_or_else(to_out_of_range)?;
    let end = after.and_time(NaiveTime::MIN).and_utc();
    Ok(usage::daily(&state.pool, workspace_id, start, end).await?)
}

fn totals(days: &[UsageDay]) -> Value {
    let sum = |f: fn(&UsageDay) -> i64| days.iter().map(f).sum::<i64>();
    json!({
        "started": sum(|d| d.started), "succeeded": sum(|d| d.succeeded),
        "failed": sum(|d| d.failed), "cancelled": sum(|d| d.cancelled),
        "steps": sum(|d| d.steps), "retries": sum(|d| d.retries),
        "rate_limited": sum(|d| d.rate_limited), "parked": sum(|d| d.parked),
        "bytes_out": sum(|d| d.bytes_out), "bytes_in": sum(|d| d.bytes_in),
    })
}

/// The caller's workspace usage per UTC day over `from`..=`to` (every day,
/// zeros included): executions `started` (enqueued), executions finished
/// as `succeeded`, `failed` or `cancelled`, and the `steps`, `retries`
/// (attempts after a step's first), `rate_limited` (attempts refused with
/// 429 or 503 and rescheduled), `parked` (times flow control held an
/// execution back before a send), `bytes_out` and `bytes_in` (request and
/// response body bytes) of the executions that finished; plus
/// `totals`. Only history that retention has kept is counted.
#[utoipa::path(get, path = "/usage", tag = "usage", params(UsageQuery),
    responses((status = 200, description = "`from`, `to`, `days` and `totals`", body = Object), (status = 400)))]
async fn workspace_usage(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<UsageQuery>,
) -> ApiResult<Json<Value>> {
    let (from, to) = window(q.from, q.to)?;
    let active = read(&state, Some(&caller.workspace_id), (from, to)).await?;
    let days: Vec<UsageDay> = from
        .iter_days()
        .take_while(|d| *d <= to)
        .map(|day| {
            active
                .iter()
                .find(|u| u.day == day)
                .cloned()
                .unwrap_or(UsageDay {
                    workspace_id: caller.workspace_id.clone(),
                    day,
                    started: 0,
                    succeeded: 0,
                    failed: 0,
                    cancelled: 0,
                    steps: 0,
                    retries: 0,
                    rate_limited: 0,
                    parked: 0,
                    bytes_out: 0,
                    bytes_in: 0,
                })
        })
        .collect();
    Ok(Json(json!({
        "workspace_id": caller.workspace_id, "from": from, "to": to,
        "totals": totals(&days), "days": days,
    })))
}

/// Usage of every workspace (or `workspace_id`'s) per UTC day over
/// `from`..=`to`, as `/usage` counts it: `items` holds one row per
/// workspace and day with any activity, by workspace then day.
#[utoipa::path(get, path = "/admin/usage", tag = "admin", params(AdminUsageQuery),
    responses((status = 200, description = "`from`, `to`, `items` and `totals`", body = Object), (status = 400),
              (status = 403, description = "Needs the admin role `viewer` or above")))]
async fn admin_usage(
    State(state): State<AppState>,
    _admin: Admin,
    ApiQuery(q): ApiQuery<AdminUsageQuery>,
) -> ApiResult<Json<Value>> {
    let (from, to) = window(q.from, q.to)?;
    let items = read(&state, q.workspace_id.as_deref(), (from, to)).await?;
    Ok(Json(json!({
        "from": from, "to": to, "totals": totals(&items), "items": items,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_at_the_ends_of_chronos_calendar_are_refused_not_panicked() {
        let first = NaiveDate::MIN;
        for (from, to) in [(None, Some(first)), (Some(first), Some(first))] {
            let e = window(from, to).expect_err("no day before the first");
            assert!(e.message().contains("`to`"), "{e}");
        }
        let last = NaiveDate::MAX;
        assert_eq!(
            window(None, Some(last)).expect("30 days"),
            (last - Days::new(29), last)
        );
    }
}
