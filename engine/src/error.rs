//! The engine's error type.

/// Errors raised by the engine's IO layers (store, HTTP client set-up).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A database error.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// A migration error.
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The group commit this step commit was part of failed.
    #[error("step commit: {0}")]
    Commit(String),
    /// The group statement this rate-limit reservation was part of failed.
    #[error("rate-limit reservation: {0}")]
    Reserve(String),
    /// The group statement this park was part of failed.
    #[error("park: {0}")]
    Park(String),
    /// A statement shared by several requests failed for a reason none of
    /// them caused (each request gets its own copy of the error).
    #[error("{message}")]
    Group {
        /// The statement's error.
        message: String,
        /// Whether the database was unreachable ([`Error::is_connection`]).
        connection: bool,
    },
}

impl Error {
    /// Whether the database is unreachable (connection refused or lost,
    /// pool exhausted, server shutting down) rather than refusing the
    /// request: callers answer 503 or wait and retry.
    pub fn is_connection(&self) -> bool {
        match self {
            Self::Database(e) | Self::Migrate(sqlx::migrate::MigrateError::Execute(e)) => {
                matches!(
                    e,
                    sqlx::Error::Io(_)
                        | sqlx::Error::PoolTimedOut
                        | sqlx::Error::Tls(_)
                        | sqlx::Error::PoolClosed
                ) || matches!(e, sqlx::Error::Database(db) if db.code().is_some_and(|c| c.starts_with("57P") || c.starts_with("08")))
            }
            Self::Group { connection, .. } => *connection,
            _ => false,
        }
    }
}

/// Result alias for [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
