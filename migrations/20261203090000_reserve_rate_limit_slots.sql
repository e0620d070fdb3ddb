-- Rate limits reserve slots instead of refusing (see engine/src/flow.rs):
-- every caller of a key gets its own send time, one spacing after the
-- previous one, so parked executions wake one by one instead of all at
-- once. A slot too far ahead to wait for in the worker is kept here while
-- its execution is parked, and used when the execution is claimed again.
--
-- Both tables are UNLOGGED: they are advisory pacing state, rewritten on
-- every send of a key, and a take that writes only them commits without
-- waiting for a WAL flush, so one busy key no longer serialises its
-- senders on the disk. After a crash of PostgreSQL (not a clean restart)
-- or on a promoted standby they start empty: keys start from "now" again
-- and parked executions take new slots when they wake.
ALTER TABLE flow_rate_limits SET UNLOGGED;

CREATE UNLOGGED TABLE flow_rate_reservations (
    key           text NOT NULL,
    execution_id  uuid NOT NULL REFERENCES connector_executions (id) ON DELETE CASCADE,
    slot          timestamptz NOT NULL,
    PRIMARY KEY (key, execution_id)
);

-- Deleting an execution (retention) finds its reservations through this.
CREATE INDEX flow_rate_reservations_execution_idx ON flow_rate_reservations (execution_id);
