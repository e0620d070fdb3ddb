-- Per-workspace retention of finished executions: a plan (`free` keeps 90
-- days, `pro` 365) or `custom` with its own `retention_days`. A workspace
-- with neither follows the worker's CONVEYOR_RETENTION_DAYS.
ALTER TABLE workspaces
    ADD COLUMN plan text
        CONSTRAINT workspaces_plan_known CHECK (plan IN ('free', 'pro', 'custom')),
    ADD COLUMN retention_days integer
        CONSTRAINT workspaces_retention_days_range CHECK (retention_days BETWEEN 1 AND 3650),
    ADD CONSTRAINT workspaces_custom_has_days
        CHECK ((plan = 'custom') = (retention_days IS NOT NULL));
