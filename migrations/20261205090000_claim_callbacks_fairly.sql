-- The callback outbox is claimed fairly across workspaces, as executions
-- are: a loose index scan finds each workspace with pending deliveries,
-- each offers its oldest due ones, and the claim takes them in order of
-- the workspace's deliveries in flight plus their place in its line, so
-- one workspace's backlog to a slow receiver no longer delays every
-- other workspace's callbacks behind it.
CREATE INDEX callback_deliveries_workspace_due_idx
    ON callback_deliveries (workspace_id, next_attempt_at, id) WHERE status = 'pending';
-- A workspace's deliveries in flight: leased ones (few, however deep the
-- backlog), counted at each claim.
CREATE INDEX callback_deliveries_workspace_leased_idx
    ON callback_deliveries (workspace_id, lease_expires_at)
    WHERE status = 'pending' AND lease_expires_at IS NOT NULL;
-- The global next_attempt_at order is gone: the index above serves every
-- read of pending rows.
DROP INDEX callback_deliveries_due_idx;
