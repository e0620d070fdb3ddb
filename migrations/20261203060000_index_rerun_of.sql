-- Deleting an execution (retention) sets `rerun_of` to NULL in every rerun
-- of it (ON DELETE SET NULL). Without an index that is a scan of the whole
-- table per deleted row, which made retention deletes quadratic in the
-- history size (docs/performance.md: 134 ms per deleted row at 100,000
-- executions, 0.35 ms with this index). Partial: almost no execution is a
-- rerun, so the index stays small and costs nothing on the hot path.
CREATE INDEX connector_executions_rerun_of_idx
    ON connector_executions (rerun_of) WHERE rerun_of IS NOT NULL;
