-- A connection whose caller wakes idle workers itself once its
-- transaction has committed (`store::enqueue::EnqueuePool`: the API's
-- grouped single executes) says so with `conveyor.notify_enqueued =
-- after_commit`, and its inserts send nothing here. A NOTIFY inside the
-- enqueueing transaction takes PostgreSQL's cluster-wide notify lock at
-- commit and holds it through the commit's WAL flush, so such
-- transactions commit one at a time, each waiting for the flush of the
-- one before; a notification sent alone writes no WAL and holds the lock
-- for microseconds. Every other insert still notifies at its commit.
CREATE OR REPLACE FUNCTION conveyor_notify_enqueued() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('conveyor.notify_enqueued', true) IS DISTINCT FROM 'after_commit' THEN
        PERFORM pg_notify('conveyor_executions_enqueued', '');
    END IF;
    RETURN NULL;
END;
$$;
