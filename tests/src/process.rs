//! `conveyor-worker` as a child process for multi-process tests (the
//! binary's path comes from the calling test, which alone knows it).

use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use wiremock::{MockServer, Request};

/// A worker child; killed (SIGKILL) and reaped on drop.
pub struct WorkerProcess {
    id: String,
    child: Child,
}

impl WorkerProcess {
    /// Starts `bin` against `database_url` with the test settings (3 s
    /// lease, fast poll, loopback allowed, no migrations), worker id `id`,
    /// sealing with the base64 `key`, plus `extra` variables.
    ///
    /// # Panics
    ///
    /// When the process cannot be started.
    pub fn start(
        bin: &str,
        database_url: &str,
        key: &str,
        id: &str,
        extra: &[(&str, &str)],
    ) -> Self {
        let mut cmd = Command::new(bin);
        cmd.env("DATABASE_URL", database_url)
            .env("CONVEYOR_ENCRYPTION_KEY", key)
            .env("CONVEYOR_ALLOW_PRIVATE_NETWORKS", "true")
            .env("CONVEYOR_AUTO_MIGRATE", "false")
            .env("CONVEYOR_LEASE_SECS", "3")
            .env("CONVEYOR_POLL_INTERVAL_MS", "100")
            .env("CONVEYOR_WORKER_CONCURRENCY", "8")
            .env("CONVEYOR_DB_MAX_CONNECTIONS", "10")
            .env("CONVEYOR_WORKER_ID", id)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (name, value) in extra {
            cmd.env(name, value);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
        Self {
            id: id.to_owned(),
            child,
        }
    }

    /// SIGKILL, then reap: the process vanishes without releasing anything.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, as an orchestrator stops a worker.
    ///
    /// # Panics
    ///
    /// When `kill -TERM` cannot be run or fails.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill -TERM");
        assert!(status.success(), "kill -TERM {} failed", self.child.id());
    }

    /// Waits for the process to exit by itself.
    ///
    /// # Panics
    ///
    /// When it is still running after `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                started.elapsed() < timeout,
                "worker {} did not exit within {timeout:?}",
                self.id
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Panics if the process has exited (it should still be serving).
    pub fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().expect("try_wait") {
            panic!("worker {} exited early: {status}", self.id);
        }
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits until `stub` has received a request `seen` picks out (the moment
/// a crash test kills the worker), polling every 50 ms.
///
/// # Panics
///
/// When none arrives within 30 s (naming `what`), or the stub does not
/// record requests.
pub async fn wait_for_request(stub: &MockServer, what: &str, seen: impl Fn(&Request) -> bool) {
    let started = Instant::now();
    loop {
        let received = stub.received_requests().await.expect("recording");
        if received.iter().any(&seen) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{what} never reached the stub"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
