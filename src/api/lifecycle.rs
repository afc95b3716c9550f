//! `POST /-/reload`: reads the config file again, as Prometheus's
//! lifecycle endpoint does. Served only with `--web.enable-lifecycle`, and
//! it is a write: `api.token` when one is set, else the trusted networks
//! (see [`super::auth`]). `SIGHUP` does the same without HTTP.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::query::{NoParams, Query};
use super::{AppError, AppState};
use crate::reload::Report;

pub fn routes(state: &AppState) -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(reload))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            super::auth::require,
        ))
}

/// `POST /-/reload`.
#[utoipa::path(post, path = "/-/reload", tag = "probes",
    params(NoParams),
    security(("api_token" = []), ("api_token_header" = []), ()),
    responses(
        (status = 200, description = "Reloaded: what changed, and what waits for a restart", body = Report),
        (status = 400, description = "The new config is invalid; the one in force is unchanged. The message names the key and what is allowed", body = super::ErrorBody),
        (status = 401, description = "Basic auth, or the token, is missing", body = super::ErrorBody),
        (status = 403, description = "Lifecycle API not enabled (--web.enable-lifecycle), wrong token, or a client outside api.trusted_networks", body = super::ErrorBody)
    ))]
pub async fn reload(State(state): State<AppState>, _: Query<NoParams>) -> Result<Json<Report>, AppError> {
    if !state.reload.lifecycle() {
        return Err(AppError::status(
            StatusCode::FORBIDDEN,
            "the lifecycle API is not enabled: start inferwatch with --web.enable-lifecycle, or send it SIGHUP",
            json!({ "flag": "--web.enable-lifecycle" }),
        )
        .with_code("lifecycle_disabled"));
    }
    match state.reload.reload("POST /-/reload").await {
        Ok(report) => Ok(Json(report)),
        Err(e) => Err(AppError::bad_request(
            format!("config not reloaded: {e}"),
            json!({ "config_in_force": "unchanged", "check": "inferwatch check-config <file>" }),
        )
        .with_code("invalid_config")),
    }
}
