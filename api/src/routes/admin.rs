//! Routes (to be filled in).

use utoipa_axum::router::OpenApiRouter;

use crate::AppState;

/// This group's routes.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
}
