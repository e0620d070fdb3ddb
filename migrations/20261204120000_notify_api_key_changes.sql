-- API processes keep the API keys they have looked up while they LISTEN
-- on conveyor_api_keys (api/src/auth/keys.rs): every change that can make
-- a kept key refuse a request, or act otherwise (revoked, expiry, scopes,
-- workspace, digest; deleted; the table truncated), is notified with the
-- key's id, '*' for all. `last_used_at`, which lookups set, is not.
CREATE FUNCTION conveyor_notify_api_key_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        PERFORM pg_notify('conveyor_api_keys', '*');
    ELSE
        PERFORM pg_notify('conveyor_api_keys', OLD.id::text);
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER workspace_api_keys_changed
    AFTER UPDATE ON workspace_api_keys
    FOR EACH ROW
    WHEN ((OLD.id, OLD.workspace_id, OLD.key_hash, OLD.revoked_at, OLD.expires_at, OLD.scopes)
          IS DISTINCT FROM (NEW.id, NEW.workspace_id, NEW.key_hash, NEW.revoked_at, NEW.expires_at, NEW.scopes))
    EXECUTE FUNCTION conveyor_notify_api_key_change();

CREATE TRIGGER workspace_api_keys_deleted
    AFTER DELETE ON workspace_api_keys
    FOR EACH ROW EXECUTE FUNCTION conveyor_notify_api_key_change();

CREATE TRIGGER workspace_api_keys_truncated
    AFTER TRUNCATE ON workspace_api_keys
    FOR EACH STATEMENT EXECUTE FUNCTION conveyor_notify_api_key_change();
