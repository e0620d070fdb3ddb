-- Every row a workspace owns carries its workspace_id (docs/scaling.md,
-- "Tables and their workspace key"): these four were reached only through
-- their parent (a schedule, a webhook trigger, a callback delivery, an
-- execution). With the column, moving a workspace to another cell copies
-- each table with `WHERE workspace_id = $1`, and a Citus cluster can
-- distribute them with their parents. No index is added: every read
-- still goes through the parent's key, which the workspace owns.
--
-- The backfill rewrites each row once; the tables are delivery logs that
-- retention keeps short, and watchers live for minutes.

ALTER TABLE schedule_ticks ADD COLUMN workspace_id text;
UPDATE schedule_ticks t SET workspace_id = s.workspace_id
    FROM connector_schedules s WHERE s.id = t.schedule_id;
ALTER TABLE schedule_ticks ALTER COLUMN workspace_id SET NOT NULL;

ALTER TABLE trigger_deliveries ADD COLUMN workspace_id text;
UPDATE trigger_deliveries d SET workspace_id = t.workspace_id
    FROM webhook_triggers t WHERE t.id = d.trigger_id;
ALTER TABLE trigger_deliveries ALTER COLUMN workspace_id SET NOT NULL;

ALTER TABLE callback_attempts ADD COLUMN workspace_id text;
UPDATE callback_attempts a SET workspace_id = d.workspace_id
    FROM callback_deliveries d WHERE d.id = a.delivery_id;
ALTER TABLE callback_attempts ALTER COLUMN workspace_id SET NOT NULL;

-- A watcher of an execution retention has deleted watches nothing.
DELETE FROM execution_watchers w
    WHERE NOT EXISTS (SELECT 1 FROM connector_executions e WHERE e.id = w.execution_id);
ALTER TABLE execution_watchers ADD COLUMN workspace_id text;
UPDATE execution_watchers w SET workspace_id = e.workspace_id
    FROM connector_executions e WHERE e.id = w.execution_id;
ALTER TABLE execution_watchers ALTER COLUMN workspace_id SET NOT NULL;
