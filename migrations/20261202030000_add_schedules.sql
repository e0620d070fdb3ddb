-- Cron schedules: rows, not timers. Every process's scheduler pass claims
-- due rows with FOR UPDATE SKIP LOCKED; a tick becomes an execution only
-- through an INSERT into schedule_ticks, whose primary key (schedule,
-- tick time) makes a second claim of the same tick a no-op, in the same
-- transaction that enqueues it.
CREATE TABLE connector_schedules (
    id               uuid PRIMARY KEY,
    workspace_id     text NOT NULL REFERENCES workspaces (id),
    connector_id     uuid NOT NULL REFERENCES connectors (id),
    cron             text NOT NULL
                     CONSTRAINT connector_schedules_cron_length CHECK (length(cron) BETWEEN 1 AND 200),
    timezone         text NOT NULL
                     CONSTRAINT connector_schedules_timezone_length CHECK (length(timezone) BETWEEN 1 AND 64),
    input            jsonb NOT NULL,
    overlap          text NOT NULL
                     CONSTRAINT connector_schedules_overlap_known CHECK (overlap IN ('skip', 'allow', 'queue_one')),
    end_at           timestamptz,
    paused           boolean NOT NULL DEFAULT false,
    -- The next tick to fire; NULL once the schedule has ended.
    next_fire_at     timestamptz,
    -- A tick held back by `queue_one` until the previous run finishes.
    pending_tick_at  timestamptz,
    -- The execution of the last tick that started one (overlap checks).
    last_execution_id uuid,
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL
);
CREATE INDEX connector_schedules_due_idx ON connector_schedules (next_fire_at)
    WHERE NOT paused AND next_fire_at IS NOT NULL;
CREATE INDEX connector_schedules_pending_idx ON connector_schedules (pending_tick_at)
    WHERE pending_tick_at IS NOT NULL;
CREATE INDEX connector_schedules_connector_idx ON connector_schedules (workspace_id, connector_id, created_at);

-- One row per tick a scheduler pass handled: started (with its execution),
-- skipped by the overlap policy, held back by `queue_one`, or failed (the
-- input no longer matches the connector's input_schema).
CREATE TABLE schedule_ticks (
    schedule_id   uuid NOT NULL REFERENCES connector_schedules (id) ON DELETE CASCADE,
    tick_at       timestamptz NOT NULL,
    outcome       text NOT NULL
                  CONSTRAINT schedule_ticks_outcome_known CHECK (outcome IN ('started', 'skipped', 'queued', 'failed')),
    execution_id  uuid,
    error         text,
    recorded_at   timestamptz NOT NULL,
    PRIMARY KEY (schedule_id, tick_at)
);
