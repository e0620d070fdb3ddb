//! The LISTEN/NOTIFY channels, named in one place. The database sends on
//! them from triggers (see the migrations); listeners use these names.

/// Enqueue notifies idle workers here (the `conveyor_notify_enqueued`
/// statement trigger); the payload is empty.
pub const EXECUTIONS_ENQUEUED: &str = "conveyor_executions_enqueued";

/// Changes of watched executions (those in `execution_watchers`) are
/// notified here; the payload is the execution id. API processes listen
/// once and fan out to their SSE subscribers.
pub const EXECUTION_EVENTS: &str = "conveyor_execution_events";

/// Changes of executions in watched workspaces (those in
/// `workspace_watchers`) are notified here, once per statement and
/// workspace; the payload is the workspace id. The console's executions
/// list re-reads itself on it.
pub const WORKSPACE_EVENTS: &str = "conveyor_workspace_events";

/// Changes of API keys (revoked, expiry, scopes, deleted) are notified
/// here by the `workspace_api_keys` triggers; the payload is the key's
/// id, `*` for every key. API processes that keep looked-up keys drop
/// them on it.
pub const API_KEYS: &str = "conveyor_api_keys";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_channel_is_the_one_its_trigger_notifies() {
        let schema = include_str!("../../../migrations/20261123000000_create_schema.sql");
        // The latest definition of the event trigger's function.
        let events = include_str!("../../../migrations/20261203020000_add_workspace_watchers.sql");
        assert!(schema.contains(&format!("pg_notify('{EXECUTIONS_ENQUEUED}'")));
        assert!(events.contains(&format!("pg_notify('{EXECUTION_EVENTS}'")));
        assert!(events.contains(&format!("pg_notify('{WORKSPACE_EVENTS}'")));
        let keys = include_str!("../../../migrations/20261204120000_notify_api_key_changes.sql");
        assert!(keys.contains(&format!("pg_notify('{API_KEYS}', '*')")));
        assert!(keys.contains(&format!("pg_notify('{API_KEYS}', OLD.id::text)")));
    }
}
