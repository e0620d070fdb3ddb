-- Event subscriptions: a workspace registers URLs that are told about
-- its events (an execution ended, a credential needs a reconnect). Their
-- deliveries are rows of the completion-callback outbox, so they are sent,
-- signed, retried and recorded by the very same sender.
CREATE TABLE webhook_subscriptions (
    id           uuid PRIMARY KEY,
    workspace_id text NOT NULL REFERENCES workspaces (id),
    url          text NOT NULL
                 CONSTRAINT webhook_subscriptions_url_form
                 CHECK (url ~ '^https?://' AND length(url) <= 2048),
    events       text[] NOT NULL
                 CONSTRAINT webhook_subscriptions_events_known CHECK (
                     cardinality(events) BETWEEN 1 AND 5
                     AND events <@ ARRAY['*', 'execution.succeeded', 'execution.failed',
                                         'execution.cancelled', 'credential.needs_reconnect']),
    description  text
                 CONSTRAINT webhook_subscriptions_description_length CHECK (length(description) <= 500),
    enabled      boolean NOT NULL DEFAULT true,
    created_at   timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL
);
CREATE INDEX webhook_subscriptions_workspace_idx
    ON webhook_subscriptions (workspace_id, created_at, id);

-- A delivery is a completion callback (subscription_id NULL) or an event
-- for a subscription; an event that is not about an execution carries its
-- data in `payload`. Deleting a subscription drops its deliveries (and
-- their attempts), pending ones included.
ALTER TABLE callback_deliveries
    ALTER COLUMN execution_id DROP NOT NULL,
    ADD COLUMN subscription_id uuid REFERENCES webhook_subscriptions (id) ON DELETE CASCADE,
    ADD COLUMN payload jsonb,
    DROP CONSTRAINT callback_deliveries_event_known,
    ADD CONSTRAINT callback_deliveries_event_known CHECK (event IN
        ('execution.succeeded', 'execution.failed', 'execution.cancelled', 'credential.needs_reconnect'));
CREATE INDEX callback_deliveries_subscription_idx
    ON callback_deliveries (subscription_id, created_at DESC, id DESC) WHERE subscription_id IS NOT NULL;
-- Retention deletes finished deliveries oldest first.
CREATE INDEX callback_deliveries_finished_idx
    ON callback_deliveries (finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX trigger_deliveries_received_idx ON trigger_deliveries (received_at);
CREATE INDEX schedule_ticks_recorded_idx ON schedule_ticks (recorded_at);

-- The execution events of a workspace's subscriptions, created by the
-- UPDATE that finalizes the execution (so no final state loses its
-- events). The hot path stays cheap: the statement that finalizes pays one
-- probe of webhook_subscriptions_workspace_idx inside PostgreSQL, and no
-- extra round trip, whether or not the workspace has subscriptions; a
-- trigger's WHEN clause cannot read another table, so the probe itself is
-- the cheapest filter.
CREATE FUNCTION conveyor_enqueue_execution_events() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO callback_deliveries
        (id, workspace_id, execution_id, subscription_id, url, event, next_attempt_at, created_at)
    SELECT gen_random_uuid(), s.workspace_id, NEW.id, s.id, s.url, 'execution.' || NEW.status, now(), now()
    FROM webhook_subscriptions s
    WHERE s.workspace_id = NEW.workspace_id AND s.enabled
      AND s.events && ARRAY['*', 'execution.' || NEW.status];
    RETURN NULL;
END;
$$;
CREATE TRIGGER connector_executions_events
    AFTER UPDATE OF status ON connector_executions
    FOR EACH ROW
    WHEN (NEW.status IN ('succeeded', 'failed', 'cancelled')
          AND OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION conveyor_enqueue_execution_events();
