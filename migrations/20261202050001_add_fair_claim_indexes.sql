-- The fair claim: a loose index scan finds each workspace with queued rows,
-- then reads that workspace's best rows in priority, run_at order; the
-- running count per workspace enforces CONVEYOR_WORKSPACE_MAX_RUNNING.
CREATE INDEX connector_executions_workspace_queue_idx
    ON connector_executions (workspace_id, priority DESC, run_at, id) WHERE status = 'queued';
CREATE INDEX connector_executions_workspace_running_idx
    ON connector_executions (workspace_id) WHERE status = 'running';
-- The global (priority, run_at) order is gone: priority orders only within
-- a workspace, and the index above serves every read of queued rows.
DROP INDEX connector_executions_claim_idx;
