//! The flow-control gate before a step is sent: a concurrency slot, then a
//! rate-limit slot. A slot within [`HOLD`](flow::HOLD) is waited for in
//! place; a full concurrency key or a farther rate-limit slot parks the
//! execution (queued again shortly before it may send, lease and worker
//! slot freed, the rate-limit slot kept for it), which costs no attempt.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

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

/// The slots a runner reserved on a key beyond the one it needed (a block,
/// see [`flow::block_len`]), handed to its next sends of that key without
/// a statement, and whether the key was idle at its last reservation (its
/// next one then asks for a block, one sender at a time while the others
/// wait for that block). Keys with nothing left are forgotten once more
/// than [`BLOCK_KEYS`] are known.
#[derive(Debug, Default)]
pub(super) struct Blocks(Mutex<HashMap<String, Block>>);

/// How many keys [`Blocks`] holds before it forgets those with no slot left.
const BLOCK_KEYS: usize = 4_096;

/// What [`Blocks`] knows of one key.
#[derive(Debug, Clone)]
struct Block {
    /// The next slot to hand out.
    next: DateTime<Utc>,
    /// Slots left from `next` on, one step apart.
    left: i64,
    /// The key's step.
    step_us: i64,
    /// The key's TAT was behind now at the last reservation.
    idle: bool,
    /// Held by the sender reserving the key's next block.
    refill: Arc<tokio::sync::Mutex<()>>,
}

impl Blocks {
    /// A slot of `key` still [`usable`](flow::usable) at `now`, the
    /// earliest one left; slots missed by more than the late allowance are
    /// dropped (on an idle key no other send wanted them).
    pub(super) fn pop(
        &self,
        key: &str,
        now: DateTime<Utc>,
        pace: flow::Pace,
    ) -> Option<DateTime<Utc>> {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let b = map.get_mut(key)?;
        let oldest = now - chrono::Duration::microseconds(pace.late_us());
        if b.next < oldest {
            let behind = (oldest - b.next).num_microseconds().unwrap_or(i64::MAX);
            let missed = (behind.saturating_add(b.step_us - 1) / b.step_us).min(b.left);
            b.next += chrono::Duration::microseconds(missed.saturating_mul(b.step_us));
            b.left -= missed;
        }
        if b.left == 0 {
            return None;
        }
        let slot = b.next;
        b.next += chrono::Duration::microseconds(b.step_us);
        b.left -= 1;
        Some(slot)
    }

    /// The lock a sender of `key` holds while it reserves the key's next
    /// block; `None` unless the key was idle (its senders then reserve
    /// one slot each, in group takes).
    fn refill(&self, key: &str) -> Option<Arc<tokio::sync::Mutex<()>>> {
        let map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(key)
            .filter(|b| b.idle)
            .map(|b| Arc::clone(&b.refill))
    }

    /// How many slots the next reservation of `key` at `pace` asks for.
    fn count(&self, key: &str, pace: flow::Pace) -> i64 {
        let map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if map.get(key).is_some_and(|b| b.idle) {
            flow::block_len(pace)
        } else {
            1
        }
    }

    /// Records `taken`, a reservation of `count` slots of `key` answered
    /// at `now`. The key counts as idle when the first slot was not ahead
    /// of `now`; the slots after the first replace what was left of the
    /// runner's block. A kept slot (a busy key) loses the rest of its
    /// block and the block left; the execution's own kept slot, used
    /// instead of a fresh one, says nothing of the key.
    fn record(
        &self,
        key: &str,
        taken: store::Reserved,
        count: i64,
        pace: flow::Pace,
        now: DateTime<Utc>,
    ) {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if taken.kept {
            map.remove(key);
            return;
        }
        if !taken.fresh {
            return;
        }
        let idle = taken.slot <= now;
        if map.len() >= BLOCK_KEYS && !map.contains_key(key) {
            map.retain(|_, b| b.left > 0);
        }
        let b = map.entry(key.to_owned()).or_insert_with(|| Block {
            next: taken.slot,
            left: 0,
            step_us: pace.step_us,
            idle,
            refill: Arc::default(),
        });
        b.idle = idle;
        if count > 1 {
            b.next = taken.slot + chrono::Duration::microseconds(pace.step_us);
            b.left = count - 1;
            b.step_us = pace.step_us;
        }
    }

    /// Drops what is known of `key`: a provider asked it to slow down.
    fn forget(&self, key: &str) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(key);
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

/// The stored form of a rendered key: prefixed with the workspace's
/// [`key_prefix`](crate::flow::key_prefix), any U+0000 (which PostgreSQL
/// cannot store, and which would fail every reservation grouped with it)
/// replaced.
fn scoped(workspace_id: &str, rendered: &str) -> String {
    let mut key = crate::flow::key_prefix(workspace_id) + rendered;
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
    /// instead (its slot stays reserved for it). A slot left from the
    /// runner's block on the key is used first, without a statement; on a
    /// key found idle the reservation takes a block ([`Blocks`]). A slot
    /// missed by more than the tolerance (a slow round trip, a starved
    /// process) is never used: on a key whose step is longer than the late
    /// allowance it moves to now when no later slot was taken
    /// ([`store::reanchor`]); otherwise, or on any other key, the send
    /// takes a fresh one (on an idle key, now), a few times at most before
    /// parking for one step.
    async fn send_slot(
        &self,
        id: Uuid,
        key: &str,
        pace: flow::Pace,
    ) -> Result<Option<DateTime<Utc>>> {
        let take = |count| store::Take {
            key: key.to_owned(),
            id,
            pace,
            count,
        };
        let mut slot = self.first_slot(key, pace, take).await?;
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
                    fresh: true,
                },
                None => self.commits.take(take(1)).await?,
            };
        }
        Ok(Some(
            Utc::now() + chrono::Duration::microseconds(pace.step_us),
        ))
    }

    /// The first slot of a send of `key`: one left from the runner's
    /// block (handed out, never kept), or a reservation ([`Blocks`]). On a
    /// key found idle, one sender at a time reserves the next block and
    /// the others wait for it, so that a burst of sends costs one
    /// statement, not one each.
    async fn first_slot(
        &self,
        key: &str,
        pace: flow::Pace,
        take: impl Fn(i64) -> store::Take,
    ) -> Result<store::Reserved> {
        let from_block = |slot| store::Reserved {
            slot,
            kept: false,
            fresh: false,
        };
        if let Some(slot) = self.blocks.pop(key, Utc::now(), pace) {
            return Ok(from_block(slot));
        }
        let refill = self.blocks.refill(key);
        let _turn = match &refill {
            Some(lock) => {
                let turn = lock.lock().await;
                if let Some(slot) = self.blocks.pop(key, Utc::now(), pace) {
                    return Ok(from_block(slot));
                }
                Some(turn)
            }
            None => None,
        };
        let count = self.blocks.count(key, pace);
        let taken = self.commits.take(take(count)).await?;
        self.blocks.record(key, taken, count, pace, Utc::now());
        Ok(taken)
    }

    /// A provider asked `key` to slow down: no send before `until`, from
    /// any worker ([`store::push_back`]), and none from this runner's
    /// block of the key.
    pub(super) async fn push_back(
        &self,
        key: &str,
        until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<()> {
        self.blocks.forget(key);
        store::push_back(&self.pool, key, until, now).await
    }

    /// Gives back a concurrency slot taken by [`admit`](Self::admit).
    pub(super) async fn release_slot(&self, slot: Option<&str>, holder: (Uuid, i32)) -> Result<()> {
        if let Some(key) = slot {
            store::release(&self.pool, key, holder).await?;
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

    fn fresh(slot: DateTime<Utc>) -> store::Reserved {
        store::Reserved {
            slot,
            kept: false,
            fresh: true,
        }
    }

    #[test]
    fn a_block_hands_out_its_slots_in_order_and_drops_the_missed_ones() {
        let t0 = DateTime::from_timestamp(1_800_000_000, 0).expect("time");
        let us = |n| t0 + chrono::Duration::microseconds(n);
        // 2 µs steps, a late allowance of 12.5 ms: blocks of 64.
        let pace = flow::pace(1_000_000, 1_000);
        let blocks = Blocks::default();
        assert_eq!(blocks.count("k", pace), 1, "a key never seen");
        assert!(blocks.refill("k").is_none());
        assert_eq!(blocks.pop("k", t0, pace), None);
        // A slot at now: the key was idle, its next reservation is a block,
        // made by one sender at a time.
        blocks.record("k", fresh(t0), 1, pace, t0);
        assert_eq!(blocks.pop("k", t0, pace), None, "one slot, used");
        assert_eq!(blocks.count("k", pace), 64);
        let turn = blocks.refill("k").expect("an idle key");
        assert!(Arc::ptr_eq(&turn, &blocks.refill("k").expect("idle")));
        assert_eq!(blocks.count("other", pace), 1, "keys do not mix");
        blocks.record("k", fresh(us(10)), 64, pace, us(10));
        assert_eq!(blocks.pop("other", us(10), pace), None);
        assert_eq!(blocks.pop("k", us(10), pace), Some(us(12)));
        assert_eq!(blocks.pop("k", us(10), pace), Some(us(14)));
        // A slot taken alone meanwhile (its sender asked before the block
        // came) leaves the block as it is.
        blocks.record("k", fresh(us(11)), 1, pace, us(11));
        // 12.5 ms after us(20): us(16) and us(18) are too late, us(20) not.
        assert_eq!(blocks.pop("k", us(12_520), pace), Some(us(20)));
        assert_eq!(blocks.pop("k", us(12_520), pace), Some(us(22)));
        // The block's last slot is us(136); 57 were left from us(24).
        assert_eq!(blocks.pop("k", us(12_636), pace), Some(us(136)));
        assert_eq!(blocks.pop("k", us(12_636), pace), None, "all used");
        blocks.record("k", fresh(us(20_000)), 64, pace, us(20_000));
        assert_eq!(blocks.pop("k", us(40_000), pace), None, "all too late");
        assert_eq!(blocks.count("k", pace), 64, "the key is still idle");
        // A block that starts ahead: the key filled up. Its slots are
        // still handed out; the next reservation is one slot.
        blocks.record("k", fresh(us(90_000)), 64, pace, us(50_000));
        assert_eq!(blocks.count("k", pace), 1);
        assert!(blocks.refill("k").is_none(), "senders take slots alone");
        assert_eq!(blocks.pop("k", us(50_000), pace), Some(us(90_002)));
        // The same after a kept slot, and the block is gone.
        blocks.record("k", fresh(t0), 1, pace, t0);
        let kept = store::Reserved {
            slot: us(500_000),
            kept: true,
            fresh: true,
        };
        blocks.record("k", kept, 64, pace, t0);
        assert_eq!(blocks.count("k", pace), 1);
        assert_eq!(blocks.pop("k", t0, pace), None);
        // The execution's own kept slot says nothing of the key.
        blocks.record("k", fresh(t0), 1, pace, t0);
        let own = store::Reserved {
            slot: us(5),
            kept: false,
            fresh: false,
        };
        blocks.record("k", own, 64, pace, us(5));
        assert_eq!(blocks.count("k", pace), 64);
        assert_eq!(blocks.pop("k", us(5), pace), None);
        // A provider's push-back: nothing handed out, slot by slot again.
        blocks.record("k", fresh(us(10)), 64, pace, us(10));
        blocks.forget("k");
        assert_eq!(blocks.pop("k", us(10), pace), None);
        assert_eq!(blocks.count("k", pace), 1);
    }

    #[test]
    fn blocks_forget_used_up_keys_past_their_bound() {
        let t0 = DateTime::from_timestamp(1_800_000_000, 0).expect("time");
        let pace = flow::pace(1_000_000, 1_000);
        let blocks = Blocks::default();
        blocks.record("full", fresh(t0), 64, pace, t0);
        for i in 1..BLOCK_KEYS {
            blocks.record(&format!("k{i}"), fresh(t0), 1, pace, t0);
        }
        let size = || blocks.0.lock().expect("lock").len();
        assert_eq!(size(), BLOCK_KEYS);
        blocks.record("k1", fresh(t0), 1, pace, t0);
        assert_eq!(size(), BLOCK_KEYS, "a known key adds nothing");
        blocks.record("new", fresh(t0), 1, pace, t0);
        assert_eq!(size(), 2, "only the key with slots left, and the new one");
        assert_eq!(blocks.count("new", pace), 64);
        assert_eq!(
            blocks.pop("full", t0, pace),
            Some(t0 + chrono::Duration::microseconds(2))
        );
    }
}
