-- The execution event log: append-only, written by the same statements the
-- queue already runs (enqueue, claim, step commit, rescue, cancel, finish),
-- so it costs no extra round trip. Never holds a secret. Like step rows,
-- events come only from the statement that updates their execution, so
-- there is no foreign key to re-check per row; retention deletes them with
-- their execution.
CREATE TABLE execution_events (
    id            bigint GENERATED ALWAYS AS IDENTITY,
    execution_id  uuid NOT NULL,
    workspace_id  text NOT NULL,
    at            timestamptz NOT NULL,
    kind          text NOT NULL
                  CONSTRAINT execution_events_kind_valid CHECK (kind IN (
                      'enqueued', 'claimed', 'step_started', 'step_finished', 'retry_scheduled',
                      'lease_lost', 'released', 'cancel_requested', 'cancelled', 'finished')),
    details       jsonb NOT NULL DEFAULT '{}'::jsonb,
    -- One index: readers always ask for one execution's events in order.
    CONSTRAINT execution_events_pkey PRIMARY KEY (execution_id, id)
);


-- Live updates for Server-Sent Events: a notification per event, carrying
-- the execution id, sent only while some API process watches that
-- execution. NOTIFY serialises committing transactions on a global lock,
-- so unwatched executions (the bulk of the traffic) must not pay for it.
-- API processes LISTEN once and fan out to their subscribers.
CREATE UNLOGGED TABLE execution_watchers (
    execution_id  uuid NOT NULL,
    watcher       uuid NOT NULL,
    expires_at    timestamptz NOT NULL,
    PRIMARY KEY (execution_id, watcher)
);

CREATE FUNCTION conveyor_notify_execution_events() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Once per statement, and nearly free while nobody watches anything.
    IF NOT EXISTS (SELECT 1 FROM execution_watchers) THEN
        RETURN NULL;
    END IF;
    PERFORM pg_notify('conveyor_execution_events', watched.execution_id::text)
    FROM (SELECT DISTINCT n.execution_id FROM new_events n
          WHERE EXISTS (SELECT 1 FROM execution_watchers w
                        WHERE w.execution_id = n.execution_id AND w.expires_at > now())) watched;
    RETURN NULL;
END;
$$;
CREATE TRIGGER execution_events_notify
    AFTER INSERT ON execution_events
    REFERENCING NEW TABLE AS new_events
    FOR EACH STATEMENT EXECUTE FUNCTION conveyor_notify_execution_events();

-- Retention prunes finished executions oldest first.
CREATE INDEX connector_executions_finished_idx
    ON connector_executions (finished_at) WHERE finished_at IS NOT NULL;
