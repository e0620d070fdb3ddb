-- Flow control (rate limits, concurrency keys, provider signals), enforced
-- for every worker through these rows. Keys are always prefixed with the
-- owning workspace id, so one tenant can never spend another's budget.

-- GCRA: one row per rate-limit key holding its theoretical arrival time
-- (TAT). A send is allowed when the TAT is not in the future; it moves the
-- TAT on by one emission interval (per_ms / limit). A provider's
-- "slow down" pushes the TAT to the provider's reset time.
CREATE TABLE flow_rate_limits (
    key         text PRIMARY KEY,
    tat         timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL
);

-- Concurrency keys: one row per in-flight request holding a slot. A slot
-- counts only while its holder is still running under the same fencing
-- token with an unexpired lease, so a crashed worker's slot frees itself
-- when its lease expires.
CREATE TABLE flow_concurrency_slots (
    key            text NOT NULL,
    execution_id   uuid NOT NULL,
    fencing_token  bigint NOT NULL,
    acquired_at    timestamptz NOT NULL,
    PRIMARY KEY (key, execution_id)
);

-- Why a queued execution waits: written when it is parked by flow
-- control, cleared when it is claimed. `throttled_attempts` counts the
-- current step's attempts a provider refused with a rate-limit signal;
-- they are not charged to the retry policy.
ALTER TABLE connector_executions
    ADD COLUMN waiting_reason text
        CONSTRAINT connector_executions_waiting_reason_valid
        CHECK (waiting_reason IN ('rate_limit', 'concurrency')),
    ADD COLUMN waiting_key text,
    ADD COLUMN throttled_attempts integer NOT NULL DEFAULT 0
        CONSTRAINT connector_executions_throttled_attempts_non_negative
        CHECK (throttled_attempts >= 0);

-- Waking the next execution parked on a concurrency key when a slot frees.
CREATE INDEX connector_executions_waiting_idx
    ON connector_executions (waiting_key, run_at) WHERE status = 'queued' AND waiting_key IS NOT NULL;

-- A parked execution's event.
ALTER TABLE execution_events DROP CONSTRAINT execution_events_kind_valid;
ALTER TABLE execution_events ADD CONSTRAINT execution_events_kind_valid CHECK (kind IN (
    'enqueued', 'claimed', 'step_started', 'step_finished', 'retry_scheduled',
    'lease_lost', 'released', 'cancel_requested', 'cancelled', 'finished', 'parked'));
