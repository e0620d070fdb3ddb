-- Bytes each step attempt sent (request body) and received (response body,
-- as read, up to the response cap), for usage metering. Written in the
-- step commit that already inserts the row; old rows count as 0.
ALTER TABLE execution_steps
    ADD COLUMN request_bytes  integer NOT NULL DEFAULT 0,
    ADD COLUMN response_bytes integer NOT NULL DEFAULT 0;
