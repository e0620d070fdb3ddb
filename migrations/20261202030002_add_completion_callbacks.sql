-- Completion callbacks: an execution may name a URL to be told when it
-- ends. The delivery row is created by a row trigger on the very UPDATE
-- that finalizes the execution (so no final state can lose its callback),
-- and only for executions that have a callback_url: the WHEN clause keeps
-- every other finalize free of any extra work.
ALTER TABLE connector_executions
    ADD COLUMN callback_url text
        CONSTRAINT connector_executions_callback_url_form
            CHECK (callback_url ~ '^https?://' AND length(callback_url) <= 2048);

-- The outbox: one row per callback, drained by workers with a lease, and
-- retried with exponential backoff for up to 24 hours.
CREATE TABLE callback_deliveries (
    id               uuid PRIMARY KEY,
    workspace_id     text NOT NULL,
    execution_id     uuid NOT NULL,
    url              text NOT NULL,
    event            text NOT NULL
                     CONSTRAINT callback_deliveries_event_known CHECK (event IN
                         ('execution.succeeded', 'execution.failed', 'execution.cancelled')),
    status           text NOT NULL DEFAULT 'pending'
                     CONSTRAINT callback_deliveries_status_known CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL,
    lease_expires_at timestamptz,
    created_at       timestamptz NOT NULL,
    finished_at      timestamptz
);
CREATE INDEX callback_deliveries_due_idx ON callback_deliveries (next_attempt_at)
    WHERE status = 'pending';
CREATE INDEX callback_deliveries_execution_idx ON callback_deliveries (execution_id);

-- Every attempt, visible through GET /executions/{id}/callbacks.
CREATE TABLE callback_attempts (
    delivery_id   uuid NOT NULL REFERENCES callback_deliveries (id) ON DELETE CASCADE,
    attempt       integer NOT NULL,
    at            timestamptz NOT NULL,
    status_code   smallint,
    error         text,
    duration_ms   integer NOT NULL,
    PRIMARY KEY (delivery_id, attempt)
);

CREATE FUNCTION conveyor_enqueue_callback() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO callback_deliveries (id, workspace_id, execution_id, url, event, next_attempt_at, created_at)
    VALUES (gen_random_uuid(), NEW.workspace_id, NEW.id, NEW.callback_url,
            'execution.' || NEW.status, now(), now());
    RETURN NULL;
END;
$$;
CREATE TRIGGER connector_executions_callback
    AFTER UPDATE OF status ON connector_executions
    FOR EACH ROW
    WHEN (NEW.callback_url IS NOT NULL
          AND NEW.status IN ('succeeded', 'failed', 'cancelled')
          AND OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION conveyor_enqueue_callback();

-- The workspace's callback signing secret (Standard Webhooks `whsec_`),
-- sealed like a credential. After a rotation the previous one keeps
-- signing alongside the new one until previous_until.
CREATE TABLE workspace_signing_secrets (
    workspace_id      text PRIMARY KEY REFERENCES workspaces (id),
    key_id            text NOT NULL,
    nonce             bytea NOT NULL,
    ciphertext        bytea NOT NULL,
    previous_key_id   text,
    previous_nonce    bytea,
    previous_ciphertext bytea,
    previous_until    timestamptz,
    created_at        timestamptz NOT NULL,
    rotated_at        timestamptz
);
