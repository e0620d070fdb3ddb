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
}

/// Result alias for [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
