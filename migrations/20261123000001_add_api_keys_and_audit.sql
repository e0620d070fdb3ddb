-- Workspace API keys for machine callers: only the SHA-256 of the key is
-- stored (keys are long random tokens, so a fast hash is the right tool).
CREATE TABLE workspace_api_keys (
    id            uuid PRIMARY KEY,
    workspace_id  text NOT NULL REFERENCES workspaces (id),
    name          text NOT NULL CONSTRAINT workspace_api_keys_name_length CHECK (length(name) BETWEEN 1 AND 200),
    prefix        text NOT NULL,
    key_hash      bytea NOT NULL UNIQUE,
    created_by    text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_used_at  timestamptz,
    revoked_at    timestamptz
);
CREATE INDEX workspace_api_keys_workspace_idx ON workspace_api_keys (workspace_id, created_at DESC);

-- Every mutating API call leaves a row: who, where, what, which object,
-- which request. Never a secret.
CREATE TABLE audit_log (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at            timestamptz NOT NULL DEFAULT now(),
    workspace_id  text,
    actor         text NOT NULL,
    action        text NOT NULL,
    object_type   text NOT NULL,
    object_id     text,
    request_id    text,
    details       jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX audit_log_workspace_idx ON audit_log (workspace_id, at DESC, id DESC);
CREATE INDEX audit_log_at_idx ON audit_log (at DESC, id DESC);
