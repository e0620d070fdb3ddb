-- OAuth2 and Nango credentials. The kind says how a credential gets its
-- token; `oauth` holds the non-secret provider settings (endpoints,
-- scopes, client auth style). Tokens stay in the sealed ciphertext; only
-- their expiry and the connection status are plain columns, so the API can
-- show them and a worker can tell a token is expiring without opening it.
ALTER TABLE workspace_api_credentials
    ADD COLUMN kind text NOT NULL DEFAULT 'static'
        CONSTRAINT workspace_api_credentials_kind CHECK (kind IN
            ('static', 'oauth2_client_credentials', 'oauth2_authorization_code', 'nango')),
    ADD COLUMN oauth jsonb,
    ADD COLUMN status text NOT NULL DEFAULT 'connected'
        CONSTRAINT workspace_api_credentials_status CHECK (status IN
            ('connected', 'needs_reconnect', 'error')),
    ADD COLUMN status_reason text,
    ADD COLUMN access_token_expires_at timestamptz,
    ADD COLUMN last_refreshed_at timestamptz;

-- One row per started authorization: single-use (`consumed_at`), bound to
-- a workspace, a credential and an expiry. Only the SHA-256 of the state
-- is stored; the PKCE verifier is sealed like a credential.
CREATE TABLE oauth_states (
    state_hash      bytea PRIMARY KEY
                    CONSTRAINT oauth_states_hash_256_bits CHECK (octet_length(state_hash) = 32),
    workspace_id    text NOT NULL,
    credential_name text NOT NULL,
    key_id          text NOT NULL,
    nonce           bytea NOT NULL CONSTRAINT oauth_states_nonce_96_bits CHECK (octet_length(nonce) = 12),
    ciphertext      bytea NOT NULL,
    expires_at      timestamptz NOT NULL,
    consumed_at     timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (workspace_id, credential_name)
        REFERENCES workspace_api_credentials (workspace_id, name) ON DELETE CASCADE
);
CREATE INDEX oauth_states_expires_at_idx ON oauth_states (expires_at);
