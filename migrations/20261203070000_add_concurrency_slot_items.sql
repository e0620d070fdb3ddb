-- A `for_each` step with `concurrency` above 1 has several requests of one
-- execution in flight at once, and each takes its own slot of the step's
-- concurrency key: `item` is the item's number from 1 (0 for every other
-- step), and it joins the primary key so that one execution may hold
-- several slots of a key.
ALTER TABLE flow_concurrency_slots
    ADD COLUMN item integer NOT NULL DEFAULT 0
        CONSTRAINT flow_concurrency_slots_item_non_negative CHECK (item >= 0);
ALTER TABLE flow_concurrency_slots
    DROP CONSTRAINT flow_concurrency_slots_pkey,
    ADD CONSTRAINT flow_concurrency_slots_pkey PRIMARY KEY (key, execution_id, item);
