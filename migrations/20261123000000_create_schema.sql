-- Conveyor's schema. Every customer-owned table carries workspace_id NOT NULL
-- and every query is scoped by it. Workspace and user ids are opaque strings
-- chosen by the calling product (up to 128 characters).

CREATE TABLE workspaces (
    id          text PRIMARY KEY
                CONSTRAINT workspaces_id_length CHECK (length(id) BETWEEN 1 AND 128),
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE saas_admin_users (
    user_id     text PRIMARY KEY
                CONSTRAINT saas_admin_users_id_length CHECK (length(user_id) BETWEEN 1 AND 128),
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- A connector is a workspace-owned, versioned definition. Versions are
-- immutable; an execution pins the version it started with.
CREATE TABLE connectors (
    id               uuid PRIMARY KEY,
    workspace_id     text NOT NULL REFERENCES workspaces (id),
    name             text NOT NULL,
    latest_version   integer NOT NULL CONSTRAINT connectors_latest_version_positive CHECK (latest_version >= 1),
    template_slug    text,
    template_version text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    deleted_at       timestamptz
);
CREATE INDEX connectors_workspace_list_idx ON connectors (workspace_id, created_at DESC, id DESC)
    WHERE deleted_at IS NULL;

CREATE TABLE connector_versions (
    connector_id  uuid NOT NULL REFERENCES connectors (id),
    version       integer NOT NULL CONSTRAINT connector_versions_version_positive CHECK (version >= 1),
    workspace_id  text NOT NULL REFERENCES workspaces (id),
    definition    jsonb NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (connector_id, version)
);

-- Credentials are sealed with AES-256-GCM: never plaintext. The associated
-- data binds each ciphertext to (workspace_id, name); key_id names the key.
CREATE TABLE workspace_api_credentials (
    workspace_id  text NOT NULL REFERENCES workspaces (id),
    name          text NOT NULL
                  CONSTRAINT workspace_api_credentials_name_format CHECK (name ~ '^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$'),
    auth_kind     text NOT NULL,
    fields        text[] NOT NULL,
    key_id        text NOT NULL,
    nonce         bytea NOT NULL CONSTRAINT workspace_api_credentials_nonce_96_bits CHECK (octet_length(nonce) = 12),
    ciphertext    bytea NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    last_used_at  timestamptz,
    PRIMARY KEY (workspace_id, name)
);
CREATE INDEX workspace_api_credentials_key_id_idx ON workspace_api_credentials (key_id);

-- The execution row IS the queue entry: status, run_at, lease, fencing
-- token, the context built so far, output and error all live here.
CREATE TABLE connector_executions (
    id                 uuid PRIMARY KEY,
    workspace_id       text NOT NULL REFERENCES workspaces (id),
    connector_id       uuid NOT NULL,
    connector_version  integer NOT NULL,
    status             text NOT NULL DEFAULT 'queued'
                       CONSTRAINT connector_executions_status_valid
                       CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    priority           smallint NOT NULL DEFAULT 0,
    run_at             timestamptz NOT NULL DEFAULT now(),
    -- How many times a worker has claimed this row.
    claims             integer NOT NULL DEFAULT 0,
    -- How many times an expired lease was taken back (the poison counter).
    reclaims           integer NOT NULL DEFAULT 0,
    lease_owner        text,
    lease_expires_at   timestamptz,
    fencing_token      bigint NOT NULL DEFAULT 0,
    cancel_requested_at timestamptz,
    -- Progress: the first unfinished step and the attempt it is on. A
    -- reclaim resumes here; a crash re-sends only this step, same attempt.
    next_step          integer NOT NULL DEFAULT 0,
    step_attempt       integer NOT NULL DEFAULT 1,
    idempotency_key    text
                       CONSTRAINT connector_executions_idempotency_key_length
                       CHECK (length(idempotency_key) BETWEEN 1 AND 255),
    input              jsonb NOT NULL,
    context            jsonb NOT NULL DEFAULT '{}'::jsonb,
    output             jsonb,
    error              jsonb,
    rerun_of           uuid REFERENCES connector_executions (id) ON DELETE SET NULL,
    trace_context      jsonb,
    created_at         timestamptz NOT NULL DEFAULT now(),
    started_at         timestamptz,
    finished_at        timestamptz,
    updated_at         timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (connector_id, connector_version) REFERENCES connector_versions (connector_id, version),
    CONSTRAINT connector_executions_lease_when_running
        CHECK ((status = 'running') = (lease_owner IS NOT NULL AND lease_expires_at IS NOT NULL)),
    CONSTRAINT connector_executions_finished_when_final
        CHECK ((status IN ('succeeded', 'failed', 'cancelled')) = (finished_at IS NOT NULL))
);
CREATE UNIQUE INDEX connector_executions_idempotency_idx
    ON connector_executions (workspace_id, idempotency_key) WHERE idempotency_key IS NOT NULL;
-- The claim query's ORDER BY, restricted to ready rows.
CREATE INDEX connector_executions_claim_idx
    ON connector_executions (priority DESC, run_at, id) WHERE status = 'queued';
-- The rescuer's scan for expired leases.
CREATE INDEX connector_executions_lease_idx
    ON connector_executions (lease_expires_at) WHERE status = 'running';
-- History, newest first, per workspace and per connector (keyset pagination).
CREATE INDEX connector_executions_history_idx
    ON connector_executions (workspace_id, created_at DESC, id DESC);
CREATE INDEX connector_executions_connector_history_idx
    ON connector_executions (connector_id, created_at DESC, id DESC);

-- One row per attempt of a step; retries keep every attempt visible. Rows
-- are only ever inserted by the fenced step commit, from the execution
-- row it just updated, so no foreign key re-checks that on every insert
-- (a per-row cost on the hottest statement); retention deletes them with
-- their execution.
CREATE TABLE execution_steps (
    execution_id      uuid NOT NULL,
    step_index        integer NOT NULL CONSTRAINT execution_steps_index_non_negative CHECK (step_index >= 0),
    attempt           integer NOT NULL CONSTRAINT execution_steps_attempt_positive CHECK (attempt >= 1),
    workspace_id      text NOT NULL,
    step_name         text NOT NULL,
    outcome           text NOT NULL
                      CONSTRAINT execution_steps_outcome_valid
                      CHECK (outcome IN ('succeeded', 'failed', 'retry_scheduled', 'continued')),
    request           jsonb NOT NULL,
    response_status   integer,
    response_headers  jsonb,
    response_body     jsonb,
    extracted         jsonb,
    error             jsonb,
    worker_id         text NOT NULL,
    started_at        timestamptz NOT NULL,
    finished_at       timestamptz NOT NULL,
    duration_ms       integer NOT NULL,
    PRIMARY KEY (execution_id, step_index, attempt)
);

-- The marketplace: official templates (synced from templates/) and
-- community submissions, with immutable versions and per-workspace ratings.
CREATE TABLE connector_templates (
    slug            text PRIMARY KEY
                    CONSTRAINT connector_templates_slug_format CHECK (slug ~ '^[a-z0-9][a-z0-9-]{0,63}$'),
    name            text NOT NULL,
    description     text NOT NULL DEFAULT '',
    category        text NOT NULL,
    provider        text NOT NULL,
    docs_url        text,
    official        boolean NOT NULL,
    review_status   text NOT NULL DEFAULT 'approved'
                    CONSTRAINT connector_templates_review_status_valid
                    CHECK (review_status IN ('pending', 'approved', 'rejected', 'retired')),
    featured        boolean NOT NULL DEFAULT false,
    submitted_by_workspace text REFERENCES workspaces (id),
    latest_version  text NOT NULL,
    install_count   bigint NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE connector_template_versions (
    slug        text NOT NULL REFERENCES connector_templates (slug),
    version     text NOT NULL,
    definition  jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (slug, version)
);

CREATE TABLE connector_template_ratings (
    slug          text NOT NULL REFERENCES connector_templates (slug),
    workspace_id  text NOT NULL REFERENCES workspaces (id),
    stars         smallint NOT NULL CONSTRAINT connector_template_ratings_stars_range CHECK (stars BETWEEN 1 AND 5),
    review        text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (slug, workspace_id)
);

-- Wake idle workers when executions are enqueued: once per INSERT
-- statement (a batch insert notifies once), delivered at commit.
CREATE FUNCTION conveyor_notify_enqueued() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('conveyor_executions_enqueued', '');
    RETURN NULL;
END;
$$;
CREATE TRIGGER connector_executions_notify_enqueued
    AFTER INSERT ON connector_executions
    FOR EACH STATEMENT EXECUTE FUNCTION conveyor_notify_enqueued();
