-- What started each execution, as `<kind>:<id>`: `user:<id>`,
-- `api_key:<id>`, `rerun_of:<execution id>`; `schedule:<id>` and
-- `trigger:<id>` are reserved for schedules and triggers. Rows enqueued
-- before this column existed keep NULL (unknown).
ALTER TABLE connector_executions
    ADD COLUMN started_by text
    CONSTRAINT connector_executions_started_by_form
        CHECK (started_by ~ '^(user|api_key|rerun_of|schedule|trigger):.+$' AND length(started_by) <= 300);
