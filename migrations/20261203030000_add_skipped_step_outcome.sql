-- A step whose `when` condition is false is not sent and is recorded with
-- the outcome `skipped`. The new check is added NOT VALID and validated
-- separately, so existing rows are scanned without blocking writes.
ALTER TABLE execution_steps DROP CONSTRAINT execution_steps_outcome_valid;
ALTER TABLE execution_steps ADD CONSTRAINT execution_steps_outcome_valid
    CHECK (outcome IN ('succeeded', 'failed', 'retry_scheduled', 'continued', 'skipped')) NOT VALID;
ALTER TABLE execution_steps VALIDATE CONSTRAINT execution_steps_outcome_valid;
