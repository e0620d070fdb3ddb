-- Inbound webhook triggers: POST /hooks/{id} starts the connector. The id
-- is 128 random bits in hex (the URL is the first secret); the
-- verification secret is sealed like a credential (AES-256-GCM, the
-- workspace and `trigger:<id>` as associated data) and never shown again.
CREATE TABLE webhook_triggers (
    id            text PRIMARY KEY
                  CONSTRAINT webhook_triggers_id_form CHECK (id ~ '^[0-9a-f]{32}$'),
    workspace_id  text NOT NULL REFERENCES workspaces (id),
    connector_id  uuid NOT NULL REFERENCES connectors (id),
    scheme        text NOT NULL
                  CONSTRAINT webhook_triggers_scheme_known CHECK (scheme IN
                      ('none', 'header', 'hmac_sha256', 'stripe', 'shopify', 'slack', 'github', 'standard_webhooks')),
    -- Non-secret settings: header, encoding, prefix, tolerance_secs, id_header.
    settings      jsonb NOT NULL,
    -- Input field -> JSONPath or <<...>> template over {body, headers, query}.
    mapping       jsonb,
    key_id        text,
    nonce         bytea CONSTRAINT webhook_triggers_nonce_96_bits CHECK (octet_length(nonce) = 12),
    ciphertext    bytea,
    created_at    timestamptz NOT NULL,
    CONSTRAINT webhook_triggers_secret_whole CHECK ((key_id IS NULL) = (ciphertext IS NULL) AND (nonce IS NULL) = (ciphertext IS NULL)),
    CONSTRAINT webhook_triggers_secret_needed CHECK ((scheme = 'none') = (ciphertext IS NULL))
);
CREATE INDEX webhook_triggers_connector_idx ON webhook_triggers (workspace_id, connector_id, created_at);

-- Every delivery to a trigger, refused ones included: what was answered
-- and why, the provider's delivery id, the execution it started.
CREATE TABLE trigger_deliveries (
    id            uuid PRIMARY KEY,
    trigger_id    text NOT NULL REFERENCES webhook_triggers (id) ON DELETE CASCADE,
    received_at   timestamptz NOT NULL,
    status        smallint NOT NULL,
    outcome       text NOT NULL
                  CONSTRAINT trigger_deliveries_outcome_known CHECK (outcome IN
                      ('started', 'duplicate', 'unverified', 'unmapped', 'handshake')),
    delivery_id   text CONSTRAINT trigger_deliveries_delivery_id_length CHECK (length(delivery_id) <= 255),
    execution_id  uuid,
    error         text
);
CREATE INDEX trigger_deliveries_recent_idx ON trigger_deliveries (trigger_id, received_at DESC, id DESC);
