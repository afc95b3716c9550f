//! `GET /api/openapi.json`: the OpenAPI 3.1 document of the HTTP API. The
//! router builds it (`utoipa_axum`'s `OpenApiRouter`): each handler's
//! `#[utoipa::path]` gives its path, method and responses, and the
//! `IntoParams` struct of its [`super::query::Query`] gives its parameters
//! and their ranges, the ones that are checked. This file holds only what
//! no route says: the info, tags, the JSON error shape and the auth
//! schemes.

use std::sync::Arc;

use axum::extract::State;
use axum::{Extension, Json};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{AppState, ErrorBody};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "inferwatch",
        description = "GPU inference monitoring daemon: Prometheus metrics, GPU readings, service health, queues and dead-letter queues, pipeline ingest."
    ),
    components(schemas(ErrorBody)),
    modifiers(&Security),
    tags(
        (name = "probes", description = "Metrics, liveness and readiness"),
        (name = "system", description = "GPUs, health and daemon summary"),
        (name = "dlq", description = "Queues and dead-letter queues"),
        (name = "pipeline", description = "Pipeline-stage events"),
        (name = "storage", description = "Data directory and retention")
    )
)]
pub struct ApiDoc;

/// The auth schemes: `api.token` as a bearer token (or the
/// `X-Inferwatch-Token` header), and basic auth from `--web.config.file`.
struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("api.token (or api.ingest_token for pipeline ingest)"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "api_token_header",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-Inferwatch-Token",
                "api.token, for clients whose Authorization header carries basic auth",
            ))),
        );
        components.add_security_scheme(
            "basic_auth",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Basic)
                    .description(Some("basic_auth_users of --web.config.file, on every route when set"))
                    .build(),
            ),
        );
    }
}

/// `GET /api/openapi.json`: the document, with this daemon's configured
/// DLQs as the allowed values of every `queue` and `dlq` parameter (any
/// other name is a 4xx, so clients and fuzzers can see what works here).
#[utoipa::path(get, path = "/api/openapi.json", tag = "probes",
    responses((status = 200, description = "This OpenAPI 3.1 document", content_type = "application/json", body = Object)))]
pub async fn openapi_json(
    State(state): State<AppState>,
    Extension(base): Extension<Arc<utoipa::openapi::OpenApi>>,
) -> Json<utoipa::openapi::OpenApi> {
    let known: Vec<String> = state.queues.as_ref().map(|q| q.known_dlqs()).unwrap_or_default();
    let names: Vec<String> = state
        .queues
        .as_ref()
        .map(|q| q.config().names.clone())
        .unwrap_or_default();
    Json(document(&base, &known, &names))
}

/// The archive keys of the configured DLQs: `<dlq>:cleared:<unix_ts>`.
fn archive_pattern(known: &[String]) -> String {
    let names: Vec<String> = known.iter().map(|k| regex_escape(k)).collect();
    format!("^({}):(cleared|deleted):[0-9]{{1,19}}$", names.join("|"))
}

/// `s` with the ECMA-262 regex metacharacters escaped.
fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\^$.|?*+()[]{}/".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The router's document with `known` as the values of the DLQ-name parameters,
/// and `names` (the base queues) as those of `/api/system/queues/{queue}`.
pub fn document(base: &utoipa::openapi::OpenApi, known: &[String], names: &[String]) -> utoipa::openapi::OpenApi {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    let mut doc = base.clone();
    if known.is_empty() {
        return doc;
    }
    for (path, item) in doc.paths.paths.iter_mut() {
        let values = if path.starts_with("/api/system/queues/") {
            names
        } else {
            known
        };
        let ops = [&mut item.get, &mut item.post, &mut item.delete];
        for op in ops.into_iter().flatten() {
            for p in op.parameters.iter_mut().flatten() {
                if p.name == "queue" || p.name == "dlq" {
                    p.schema = Some(
                        ObjectBuilder::new()
                            .schema_type(Type::String)
                            .enum_values(Some(values.iter().cloned()))
                            .into(),
                    );
                } else if p.name == "archive" {
                    p.schema = Some(
                        ObjectBuilder::new()
                            .schema_type(Type::String)
                            .pattern(Some(archive_pattern(known)))
                            .into(),
                    );
                }
            }
        }
    }
    doc
}
