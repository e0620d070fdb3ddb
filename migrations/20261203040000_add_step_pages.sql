-- A paginated step stores one row per page (and per attempt of a page):
-- `page` numbers them from 1. Every other step row has page 0, which the
-- API shows as no page. The page joins the primary key so that page 2's
-- first attempt does not collide with page 1's.
ALTER TABLE execution_steps
    ADD COLUMN page integer NOT NULL DEFAULT 0
        CONSTRAINT execution_steps_page_non_negative CHECK (page >= 0);
ALTER TABLE execution_steps
    DROP CONSTRAINT execution_steps_pkey,
    ADD CONSTRAINT execution_steps_pkey PRIMARY KEY (execution_id, step_index, page, attempt);
