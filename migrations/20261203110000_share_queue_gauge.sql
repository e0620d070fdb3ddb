-- The queue gauges (conveyor_queue_depth, conveyor_oldest_ready_age_seconds)
-- are published by the API and by every worker with metrics on. Each used to
-- count the ready backlog itself every 5 s: a count is linear in the backlog
-- (450 ms over 550,000 queued rows on the 2-core box), so N processes paid N
-- of them per interval exactly when the database was busiest. Now the
-- processes share this one row: whoever finds it due (and not locked by
-- another refresher) counts and stores the result, the others read it.
CREATE TABLE queue_gauge (
    -- Always true: the table holds exactly one row.
    id           boolean PRIMARY KEY DEFAULT true CHECK (id),
    -- Queued executions whose run_at had passed when measured.
    depth        bigint NOT NULL DEFAULT 0,
    -- The earliest run_at among them; NULL when there were none.
    oldest_at    timestamptz,
    measured_at  timestamptz,
    -- When the next count is due: the interval, or longer after a slow count.
    next_at      timestamptz NOT NULL DEFAULT '-infinity'
);

INSERT INTO queue_gauge DEFAULT VALUES;
