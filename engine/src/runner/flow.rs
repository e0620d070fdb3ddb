//! The flow-control gate before a step is sent: a concurrency slot, then a
//! rate-limit slot. A slot within [`HOLD`](flow::HOLD) is waited for in
//! place; a full concurrency key or a farther rate-limit slot parks the
//! execution (queued again shortly before it may send, lease and worker
//! slot freed, the rate-limit slot kept for it), which costs no attempt.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::{Mutex, PoisonError};

use chrono::{DateTime, Utc};
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

/// When a parked execution is due again, and its id when it holds a
/// rate-limit slot (the claim then takes it first).
type Wake = (DateTime<Utc>, Option<Uuid>);

/// When the executions a runner parked are due again, so its worker
/// claims them at that moment instead of at its next poll.
#[derive(Debug, Default)]
pub(super) struct Wakes(Mutex<BinaryHeap<Reverse<Wake>>>);

impl Wakes {
    fn push(&self, at: DateTime<Utc>, id: Option<Uuid>) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Reverse((at, id)));
    }

    /// Takes the wakes due at `now`, earliest first, until `max` of
    /// them named an execution; returns those executions.
    pub(super) fn due(&self, now: DateTime<Utc>, max: usize) -> Vec<Uuid> {
        let mut heap = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let mut due = Vec::new();
        while due.len() < max && heap.peek().is_some_and(|Reverse((at, _))| *at <= now) {
            if let Some(Reverse((_, Some(id)))) = heap.pop() {
                due.push(id);
            }
        }
        due
    }

    /// The earliest wake still pending.
    pub(super) fn next(&self) -> Option<DateTime<Utc>> {
        let heap = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        heap.peek().map(|Reverse((at, _))| *at)
    }
}

/// Fresh slots a send may miss in a row before its execution parks.
const MISSED_SLOTS: usize = 3;

/// What [`Runner::admit`] decided.
pub(super) enum Admit {
    /// Send; holding the named concurrency slot, if any.
    Go(Option<String>),
    /// Wait until then, for that reason, on that key.
    Wait(DateTime<Utc>, WaitReason, String),
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

/// The stored form of a rendered key: prefixed with the workspace id,
/// any U+0000 (which PostgreSQL cannot store, and which would fail every
/// reservation grouped with it) replaced.
fn scoped(workspace_id: &str, rendered: &str) -> String {
    let mut key = format!("{workspace_id}:{rendered}");
    crate::store::group::storable_text(&mut key);
    key
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
            let pace = flow::pace(r.limit, r.per_ms);
            if let Some(at) = self.send_slot(id, &key, pace).await? {
                self.release_slot(slot.as_deref(), (id, item)).await?;
                return Ok(Admit::Wait(at, WaitReason::RateLimit, key));
            }
        }
        Ok(Admit::Go(slot))
    }

    /// Reserves a send on rate-limit `key` and waits in place until its
    /// slot when that is near; `Some(run_at)` when the execution must park
    /// instead (its slot stays reserved for it). A slot missed by more than
    /// the tolerance (a slow round trip, a starved process) is never used:
    /// on a key whose step is longer than the late allowance it moves to
    /// now when no later slot was taken ([`store::reanchor`]); otherwise,
    /// or on any other key, the send takes a fresh one (on an idle key,
    /// now), a few times at most before parking for one step.
    async fn send_slot(
        &self,
        id: Uuid,
        key: &str,
        pace: flow::Pace,
    ) -> Result<Option<DateTime<Utc>>> {
        let take = || store::Take {
            key: key.to_owned(),
            id,
            pace,
        };
        let mut slot = self.commits.take(take()).await?;
        for _ in 0..MISSED_SLOTS {
            if slot.kept {
                return Ok(Some(flow::wake_for(slot.slot)));
            }
            if let Ok(wait) = (slot.slot - Utc::now()).to_std() {
                tokio::time::sleep(wait).await;
            }
            if flow::usable(slot.slot, Utc::now(), pace) {
                return Ok(None);
            }
            metrics::counter!("conveyor_flow_missed_slots_total").increment(1);
            // On a key whose step is within the late allowance, the TAT
            // one step past the missed slot has passed too: a fresh take
            // gives the slot a reanchor would, and shares its statement.
            let moved = if pace.step_us > pace.late_us() {
                store::reanchor(&self.pool, key, slot.slot, pace, Utc::now()).await?
            } else {
                None
            };
            slot = match moved {
                Some(moved) => store::Reserved {
                    slot: moved,
                    kept: false,
                },
                None => self.commits.take(take()).await?,
            };
        }
        Ok(Some(
            Utc::now() + chrono::Duration::microseconds(pace.step_us),
        ))
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
        until: DateTime<Utc>,
        reason: WaitReason,
        key: &str,
    ) -> Result<Gate> {
        let park = store::Park {
            id,
            token,
            run_at: until,
            reason,
            key: key.to_owned(),
        };
        if self.commits.park(park).await? {
            info!(?reason, %until, "parked by flow control");
            // Only a rate-limit park holds a slot that passes if it
            // waits; one on a concurrency key takes its turn in the round.
            let holds_slot = matches!(reason, WaitReason::RateLimit);
            self.wakes.push(until, holds_slot.then_some(id));
            metrics::counter!("conveyor_flow_parked_total").increment(1);
            Ok(Gate::Parked)
        } else {
            Ok(Gate::LeaseLost)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wakes_come_due_earliest_first_and_once() {
        let t0 = DateTime::from_timestamp(1_800_000_000, 0).expect("time");
        let ms = |n| t0 + chrono::Duration::milliseconds(n);
        let ids: Vec<Uuid> = (1..=3).map(Uuid::from_u128).collect();
        let wakes = Wakes::default();
        assert_eq!(wakes.next(), None);
        for (at, id) in [(ms(300), ids[2]), (ms(100), ids[0]), (ms(200), ids[1])] {
            wakes.push(at, Some(id));
        }
        // A wake that names no execution only sets the time.
        wakes.push(ms(50), None);
        assert_eq!(wakes.next(), Some(ms(50)));
        assert!(wakes.due(ms(99), 8).is_empty());
        assert_eq!(wakes.due(ms(100), 8), [ids[0]]);
        assert_eq!(wakes.next(), Some(ms(200)));
        // No more than asked for; the rest stay due.
        assert_eq!(wakes.due(ms(300), 1), [ids[1]]);
        assert_eq!(wakes.due(ms(300), 8), [ids[2]]);
        assert_eq!(wakes.next(), None);
        assert!(wakes.due(ms(400), 8).is_empty());
    }
}
