-- API keys carry scopes (what they may do) and an optional expiry.
-- Existing keys keep every scope and never expire.
ALTER TABLE workspace_api_keys
    ADD COLUMN scopes text[] NOT NULL DEFAULT ARRAY['read', 'execute', 'manage'],
    ADD COLUMN expires_at timestamptz,
    ADD CONSTRAINT workspace_api_keys_scopes_valid
        CHECK (cardinality(scopes) >= 1 AND scopes <@ ARRAY['read', 'execute', 'manage']);
