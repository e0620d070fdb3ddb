-- Workspace membership, for deployments whose JWT issuer does not already
-- guarantee that a token's user belongs to its `workspace_id`: with
-- CONVEYOR_REQUIRE_MEMBERSHIP=true the API refuses a user token whose
-- (workspace_id, sub) is not listed here. Managed by owner admins
-- (`/api/v1/admin/workspaces/{id}/members`) or `conveyor-api member`.
CREATE TABLE workspace_members (
    workspace_id text NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    user_id      text NOT NULL
                 CONSTRAINT workspace_members_user_id_length CHECK (length(user_id) BETWEEN 1 AND 128),
    added_by     text NOT NULL,
    added_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workspace_id, user_id)
);
