-- A `for_each` step stores one row per item (and per attempt of an item):
-- `item` numbers them from 1. Every other step row has item 0, which the
-- API shows as no item. The item joins the primary key so that item 2's
-- first attempt does not collide with item 1's.
ALTER TABLE execution_steps
    ADD COLUMN item integer NOT NULL DEFAULT 0
        CONSTRAINT execution_steps_item_non_negative CHECK (item >= 0);
ALTER TABLE execution_steps
    DROP CONSTRAINT execution_steps_pkey,
    ADD CONSTRAINT execution_steps_pkey PRIMARY KEY (execution_id, step_index, page, item, attempt);
