-- Live updates of a workspace's execution list (the console's first
-- page): while some API process watches a workspace, each statement that
-- writes execution events NOTIFYs once per watched workspace it touched,
-- with the workspace id as the payload. A list re-reads itself on that
-- signal, so the payload needs nothing more. Like execution watchers,
-- unwatched workspaces (the bulk of the traffic) pay one emptiness check
-- per statement and never the NOTIFY lock.
CREATE UNLOGGED TABLE workspace_watchers (
    workspace_id  text NOT NULL,
    watcher       uuid NOT NULL,
    expires_at    timestamptz NOT NULL,
    PRIMARY KEY (workspace_id, watcher)
);

CREATE OR REPLACE FUNCTION conveyor_notify_execution_events() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Once per statement, and nearly free while nobody watches anything.
    IF EXISTS (SELECT 1 FROM execution_watchers) THEN
        PERFORM pg_notify('conveyor_execution_events', watched.execution_id::text)
        FROM (SELECT DISTINCT n.execution_id FROM new_events n
              WHERE EXISTS (SELECT 1 FROM execution_watchers w
                            WHERE w.execution_id = n.execution_id AND w.expires_at > now())) watched;
    END IF;
    IF EXISTS (SELECT 1 FROM workspace_watchers) THEN
        PERFORM pg_notify('conveyor_workspace_events', watched.workspace_id)
        FROM (SELECT DISTINCT n.workspace_id FROM new_events n
              WHERE EXISTS (SELECT 1 FROM workspace_watchers w
                            WHERE w.workspace_id = n.workspace_id AND w.expires_at > now())) watched;
    END IF;
    RETURN NULL;
END;
$$;
