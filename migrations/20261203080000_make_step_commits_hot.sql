-- Let the updates that keep an execution running be HOT (heap-only: no
-- index entry written). An update is HOT only when it changes no indexed
-- column (nor a column a partial index's predicate names) and the new
-- row version fits on the same page.
--
-- A step commit that moves a running execution to its next step, and a
-- lease heartbeat, change `lease_expires_at` and otherwise only
-- unindexed columns, so this index was the one thing making them write
-- an entry in every index of the table (docs/performance.md). The
-- rescuer's scan for expired leases reads the running rows through
-- connector_executions_workspace_running_idx instead: there are only as
-- many as the workers hold at once.
DROP INDEX connector_executions_lease_idx;

-- Room on each page for the new versions of its rows, so HOT updates find
-- space on the row's own page. Applies to pages written from now on;
-- existing pages get it as their rows are updated or deleted.
ALTER TABLE connector_executions SET (fillfactor = 80);
