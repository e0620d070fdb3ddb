//! Numeric settings are range-checked at start: a value that would
//! overflow a timestamp later (and panic a task) stops the process at once
//! with a message naming the variable.

use std::process::{Command, Stdio};

const WORKER_BIN: &str = env!("CARGO_BIN_EXE_conveyor-worker");

/// Runs `conveyor-worker` with only `vars` set; its exit success and stderr.
fn start_with(vars: &[(&str, &str)]) -> (bool, String) {
    let mut cmd = Command::new(WORKER_BIN);
    cmd.env_clear()
        .env("DATABASE_URL", "postgres://conveyor@127.0.0.1:1/conveyor")
        .env("CONVEYOR_AUTO_MIGRATE", "false")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (name, value) in vars {
        cmd.env(name, value);
    }
    let output = cmd.output().expect("conveyor-worker runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn out_of_range_numeric_settings_stop_the_worker_naming_the_variable() {
    let cases: [(&str, &str, &str); 11] = [
        (
            "CONVEYOR_LEASE_SECS",
            "99999999999",
            "CONVEYOR_LEASE_SECS is too large",
        ),
        (
            "CONVEYOR_LEASE_SECS",
            "2",
            "CONVEYOR_LEASE_SECS must be at least 3",
        ),
        (
            "CONVEYOR_POLL_INTERVAL_MS",
            "0",
            "CONVEYOR_POLL_INTERVAL_MS must be at least 1",
        ),
        (
            "CONVEYOR_CLAIM_COOLDOWN_MS",
            "86400001",
            "CONVEYOR_CLAIM_COOLDOWN_MS is too large",
        ),
        (
            "CONVEYOR_CLAIM_COOLDOWN_MS",
            "-5",
            "CONVEYOR_CLAIM_COOLDOWN_MS: invalid value",
        ),
        (
            "CONVEYOR_SHUTDOWN_GRACE_SECS",
            "86401",
            "CONVEYOR_SHUTDOWN_GRACE_SECS is too large",
        ),
        (
            "CONVEYOR_RETENTION_DAYS",
            "99999999",
            "CONVEYOR_RETENTION_DAYS is too large",
        ),
        (
            "CONVEYOR_DELIVERY_RETENTION_DAYS",
            "99999999",
            "CONVEYOR_DELIVERY_RETENTION_DAYS is too large",
        ),
        (
            "CONVEYOR_MAX_RETRY_AFTER_SECS",
            "86401",
            "CONVEYOR_MAX_RETRY_AFTER_SECS must be at most 86400",
        ),
        (
            "CONVEYOR_WORKER_CONCURRENCY",
            "0",
            "CONVEYOR_WORKER_CONCURRENCY must be at least 1",
        ),
        (
            "CONVEYOR_MAX_PARSED_BODY_BYTES",
            "-1",
            "CONVEYOR_MAX_PARSED_BODY_BYTES: invalid value",
        ),
    ];
    for (name, value, message) in cases {
        let (ok, stderr) = start_with(&[(name, value)]);
        assert!(!ok, "{name}={value} was accepted");
        assert!(stderr.contains(message), "{name}={value}: {stderr}");
    }
}
