//! A private PostgreSQL cluster for tests that stop or restart the
//! database, which would break every other test on the shared one.

use std::path::PathBuf;
use std::process::{Command, Stdio};

/// A cluster under the system's temporary folder (which the unprivileged
/// `postgres` user can always reach, wherever the checkout lives), started
/// with `scripts/lib/pg.sh`, stopped and removed on drop.
pub struct PgCluster {
    dir: PathBuf,
    port: u16,
    settings: String,
}

impl PgCluster {
    /// Starts a cluster named after `name` with the given `postgres -c`
    /// settings (e.g. `fsync=off`).
    ///
    /// # Panics
    ///
    /// When the PostgreSQL server binaries are missing or it cannot start.
    pub fn start(name: &str, settings: &[&str]) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir =
            std::env::temp_dir().join(format!("conveyor-{name}-{}-{nanos}", std::process::id()));
        let cluster = Self {
            dir,
            port: crate::free_port(),
            settings: settings.join(" "),
        };
        cluster.up();
        cluster
    }

    /// Its connection URL.
    pub fn url(&self) -> String {
        format!("postgres://conveyor@127.0.0.1:{}/conveyor", self.port)
    }

    /// Starts it (again).
    ///
    /// # Panics
    ///
    /// When it cannot start.
    pub fn up(&self) {
        let out = pg_sh(&format!(
            "pg_up '{}' {} {}",
            self.dir.display(),
            self.port,
            self.settings
        ));
        assert!(
            out.status.success(),
            "cannot start a private PostgreSQL cluster with scripts/lib/pg.sh pg_up \
             (this test needs the PostgreSQL server binaries: initdb, pg_ctl): {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Stops it.
    ///
    /// # Panics
    ///
    /// When `pg_down` fails.
    pub fn down(&self) {
        let out = pg_sh(&format!("pg_down '{}'", self.dir.display()));
        assert!(
            out.status.success(),
            "pg_down failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let _ = pg_sh(&format!("pg_down '{}'", self.dir.display()));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `script` in bash with `scripts/lib/pg.sh` sourced.
fn pg_sh(script: &str) -> std::process::Output {
    let lib = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/lib/pg.sh");
    Command::new("bash")
        .arg("-c")
        .arg(format!("source '{lib}' && {script}"))
        .stdin(Stdio::null())
        .output()
        .expect("run bash")
}
