-- Web console sessions: the browser holds a random token in an HttpOnly
-- cookie; only its SHA-256 is stored, beside the CSRF token every
-- state-changing form must echo. A session acts as the caller who signed
-- in (a user, or an API key that stays valid only while the key does).
CREATE TABLE console_sessions (
    token_sha256  bytea PRIMARY KEY
        CONSTRAINT console_sessions_digest_length CHECK (octet_length(token_sha256) = 32),
    csrf_token    text NOT NULL
        CONSTRAINT console_sessions_csrf_length CHECK (length(csrf_token) BETWEEN 32 AND 128),
    workspace_id  text NOT NULL REFERENCES workspaces (id),
    actor         text NOT NULL,
    user_id       text,
    api_key_id    uuid REFERENCES workspace_api_keys (id) ON DELETE CASCADE,
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL,
    CONSTRAINT console_sessions_one_principal CHECK ((user_id IS NULL) <> (api_key_id IS NULL))
);
CREATE INDEX console_sessions_expires_idx ON console_sessions (expires_at);

-- One-time sign-in links (`conveyor-api console-link`): the SHA-256 of a
-- link's token once it has been used, kept until the token expires.
CREATE TABLE console_link_uses (
    token_sha256  bytea PRIMARY KEY
        CONSTRAINT console_link_uses_digest_length CHECK (octet_length(token_sha256) = 32),
    used_at       timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL
);
CREATE INDEX console_link_uses_expires_idx ON console_link_uses (expires_at);
