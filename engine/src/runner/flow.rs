//! The flow-control gate before a step is sent: a concurrency slot, then a
//! rate-limit send; when either is refused the execution is parked (queued
//! again at the time a send may be allowed, lease and worker slot freed),
//! which costs no attempt.

use chrono::Utc;
use serde_json::Value;
use tracing::info;
use uuid::Uuid;

use super::Runner;
use crate::Result;
use crate::connector::Step;
use crate::decide::{ExecutionError, RunErrorKind};
use crate::flow::{self, WaitReason};
use crate::store::flow as store;
use crate::template::Dest;

/// What [`Runner::admit`] decided.
pub(super) enum Admit {
    /// Send; holding the named concurrency slot, if any.
    Go(Option<String>),
    /// Wait until then, for that reason, on that key.
    Wait(chrono::DateTime<Utc>, WaitReason, String),
    /// A key did not render.
    Broken(ExecutionError),
}

/// What the gate decided.
pub(super) enum Gate {
    /// Send; holding the named concurrency slot, if any.
    Go(Option<String>),
    /// Parked: the execution left the worker.
    Parked,
    /// The lease was lost while parking.
    LeaseLost,
    /// A key did not render.
    Broken(ExecutionError),
}

/// The stored form of a rendered key: prefixed with the workspace id.
fn scoped(workspace_id: &str, rendered: &str) -> String {
    format!("{workspace_id}:{rendered}")
}

impl Runner {
    /// Renders `template` against `ctx` into the workspace's key.
    fn flow_key(
        &self,
        workspace_id: &str,
        field: &str,
        template: &str,
        ctx: &Value,
    ) -> Result<String, String> {
        self.client
            .renderer()
            .render_str(template, ctx, Dest::Text)
            .map(|k| scoped(workspace_id, &k))
            .map_err(|e| format!("{field}.key: {e}"))
    }

    /// The rate-limit key of `step`, for a provider's push-back.
    pub(super) fn rate_key(&self, workspace_id: &str, step: &Step, ctx: &Value) -> Option<String> {
        let r = step.rate_limit.as_ref()?;
        self.flow_key(workspace_id, "rate_limit", &r.key, ctx).ok()
    }

    /// Takes what `step` needs to be sent now, or parks the execution.
    pub(super) async fn gate(
        &self,
        (id, token): (Uuid, i64),
        workspace_id: &str,
        (step, index): (&Step, usize),
        ctx: &Value,
    ) -> Result<Gate> {
        match self
            .admit((id, token), workspace_id, (step, index, 0), ctx)
            .await?
        {
            Admit::Go(slot) => Ok(Gate::Go(slot)),
            Admit::Wait(until, reason, key) => self.park(id, token, until, reason, &key).await,
            Admit::Broken(error) => Ok(Gate::Broken(error)),
        }
    }

    /// Takes what `step` needs to be sent now (a concurrency slot named
    /// `item`, see [`store::acquire`], and a rate-limit send), or says
    /// until when it must wait; nothing is parked.
    pub(super) async fn admit(
        &self,
        (id, token): (Uuid, i64),
        workspace_id: &str,
        (step, index, item): (&Step, usize, i32),
        ctx: &Value,
    ) -> Result<Admit> {
        let broken = |message: String| {
            let mut e = ExecutionError::run(RunErrorKind::FlowControl, message);
            e.step = Some(step.name.clone());
            e.step_index = Some(index);
            Admit::Broken(e)
        };
        let mut slot = None;
        if let Some(c) = &step.concurrency {
            let key = match self.flow_key(workspace_id, "concurrency", &c.key, ctx) {
                Ok(k) => k,
                Err(m) => return Ok(broken(m)),
            };
            let now = Utc::now();
            if !store::acquire(&self.pool, &key, c.limit, id, token, item, now).await? {
                let until = now + flow::CONCURRENCY_RECHECK;
                return Ok(Admit::Wait(until, WaitReason::Concurrency, key));
            }
            slot = Some(key);
        }
        if let Some(r) = &step.rate_limit {
            let key = match self.flow_key(workspace_id, "rate_limit", &r.key, ctx) {
                Ok(k) => k,
                Err(m) => {
                    self.release_slot(slot.as_deref(), (id, item)).await?;
                    return Ok(broken(m));
                }
            };
            let interval = flow::emission_interval_us(r.limit, r.per_ms);
            if let Err(at) = store::take(&self.pool, &key, interval, Utc::now()).await? {
                self.release_slot(slot.as_deref(), (id, item)).await?;
                return Ok(Admit::Wait(at, WaitReason::RateLimit, key));
            }
        }
        Ok(Admit::Go(slot))
    }

    /// Gives back a concurrency slot taken by [`admit`](Self::admit).
    pub(super) async fn release_slot(&self, slot: Option<&str>, holder: (Uuid, i32)) -> Result<()> {
        if let Some(key) = slot {
            store::release(&self.pool, key, holder, Utc::now()).await?;
        }
        Ok(())
    }

    /// Parks the execution until `until` for `reason` on `key`.
    pub(super) async fn park(
        &self,
        id: Uuid,
        token: i64,
        until: chrono::DateTime<Utc>,
        reason: WaitReason,
        key: &str,
    ) -> Result<Gate> {
        if store::park(&self.pool, id, token, until, reason, key, Utc::now()).await? {
            info!(?reason, %until, "parked by flow control");
            metrics::counter!("conveyor_flow_parked_total").increment(1);
            Ok(Gate::Parked)
        } else {
            Ok(Gate::LeaseLost)
        }
    }
}
