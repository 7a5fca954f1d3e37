//! The server API on the internal listener, beside `POST /api/publish`: what a backend asks of
//! the whole cluster. Every route needs the server API key (`SERVER_API_KEY`, as
//! `Authorization: Bearer` or `X-API-Key`, compared in constant time) and is off without one.
//!
//! - `POST /api/revoke`: `{"user": U}`, `{"jti": J}` or `{"user": U, "issued_before": T}`, with an
//!   optional `exp` (Unix seconds: when the named tokens expire anyway). Closes the matching
//!   sessions on every replica with 4001 `revoked`, and refuses those tokens at connect until
//!   then.
//! - `POST /api/disconnect`: `{"user": U}` with optional `workspace`, `code` (1000, or 3000 to
//!   4999; 4010 by default) and `reason`. Closes that user's sessions everywhere, revoking nothing.
//! - `GET /api/presence?workspace=W` or `?room=R` (with `workspace` when rooms are per
//!   workspace): the users online, cluster-wide.
//!
//! With Kafka the order goes through the control topic and the answer comes once the broker
//! acknowledged it (every replica then applies it within its read latency); without Kafka it
//! applies to this replica only, and the answer says so (`"scope":"replica"`). A broker that
//! does not acknowledge gives 503 with `Retry-After`.

// The helpers below return the refusal itself as their error: a response, built once per bad
// request, is what the caller returns at once (no hot path carries it).
#![allow(clippy::result_large_err)]

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use crate::hub::revocations::{Revocation, Target};
use crate::ingest::control::{close_revoked, Disconnect};
use crate::ingest::publish::{authorized, problem};
use crate::protocol::close;
use crate::AppState;

/// Request bodies are small: a few ids.
const MAX_BODY_BYTES: usize = 4096;
/// Longest user id, jti or reason accepted.
const MAX_FIELD_BYTES: usize = 256;
/// The longest a revocation is kept, whatever its `exp` says.
const MAX_REVOCATION_MS: u64 = 365 * 24 * 3600 * 1000;
/// A close reason must fit a close frame (123 bytes).
const MAX_REASON_BYTES: usize = 120;

/// The key check every route starts with; the refusal when it fails.
fn guard(req: &HttpRequest, state: &AppState) -> Result<(), HttpResponse> {
    let Some(key) = state.settings.api.key.as_deref().filter(|k| !k.is_empty()) else {
        return Err(problem(
            404,
            "server API off",
            "set SERVER_API_KEY to turn the server API on",
            None,
        ));
    };
    if !authorized(req, key) {
        return Err(problem(
            401,
            "unauthorized",
            "send the server API key as `Authorization: Bearer <key>` or `X-API-Key`",
            None,
        ));
    }
    Ok(())
}

fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, HttpResponse> {
    if body.len() > MAX_BODY_BYTES {
        return Err(problem(413, "body too large", "at most 4096 bytes", None));
    }
    serde_json::from_slice(body).map_err(|e| problem(400, "bad request", &e.to_string(), None))
}

fn field(name: &str, value: &Option<String>) -> Result<(), HttpResponse> {
    match value {
        Some(v) if v.is_empty() || v.len() > MAX_FIELD_BYTES => Err(problem(
            400,
            "bad request",
            &format!("`{name}` must be 1 to {MAX_FIELD_BYTES} bytes"),
            Some(json!({"field": name})),
        )),
        _ => Ok(()),
    }
}

/// Writes a control record and waits for the broker; `None` without a control topic.
async fn write(state: &AppState, key: &str, value: Option<&str>) -> Result<Option<()>, HttpResponse> {
    let Some(control) = &state.control else {
        return Ok(None);
    };
    control.write(key, value).await.map(Some).map_err(|error| {
        tracing::warn!(%error, key, "server API order not written to the control topic");
        let mut response = problem(
            503,
            "broker unavailable",
            &format!(
                "the order was not acknowledged by Kafka: {error}; nothing was applied elsewhere, retry"
            ),
            None,
        );
        response.headers_mut().insert(
            actix_web::http::header::RETRY_AFTER,
            actix_web::http::header::HeaderValue::from_static("2"),
        );
        response
    })
}

fn scope(written: Option<()>) -> &'static str {
    if written.is_some() {
        "cluster"
    } else {
        "replica"
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeRequest {
    user: Option<String>,
    jti: Option<String>,
    issued_before: Option<u64>,
    exp: Option<u64>,
}

/// `POST /api/revoke`.
pub async fn revoke(req: HttpRequest, body: web::Bytes, state: web::Data<AppState>) -> HttpResponse {
    if let Err(refused) = guard(&req, &state) {
        return refused;
    }
    let r: RevokeRequest = match parse(&body) {
        Ok(r) => r,
        Err(refused) => return refused,
    };
    if let Err(refused) = field("user", &r.user).and(field("jti", &r.jti)) {
        return refused;
    }
    let now_ms = crate::hub::handoff::unix_ms();
    let ttl_ms = state.settings.cluster.revocation_ttl_secs * 1000;
    // Until the tokens expire anyway: the request's `exp` (within a year), else the TTL.
    let until_ms = r.exp.map_or(now_ms + ttl_ms, |exp| {
        exp.saturating_mul(1000).min(now_ms + MAX_REVOCATION_MS)
    });
    let (target, revocation) = match (r.user, r.jti, r.issued_before) {
        (Some(user), None, before) => (
            Target::User(user),
            Revocation {
                // Without a time: every token issued up to now (a login after it works).
                issued_before: Some(before.unwrap_or(now_ms / 1000 + 1)),
                until_ms,
            },
        ),
        (None, Some(jti), None) => (
            Target::Jti(jti),
            Revocation {
                issued_before: None,
                until_ms,
            },
        ),
        _ => {
            return problem(
                400,
                "bad request",
                "give `user` (optionally with `issued_before`), or `jti`",
                None,
            )
        }
    };
    if until_ms <= now_ms {
        return problem(
            400,
            "bad request",
            "`exp` is in the past: those tokens are refused already",
            Some(json!({"field": "exp"})),
        );
    }
    // Written first: a refused write applies nothing anywhere, not even here.
    let merged = state.revocations.merged(&target, revocation);
    let value = serde_json::to_string(&merged).unwrap_or_default();
    let written = match write(&state, &target.key(), Some(&value)).await {
        Ok(written) => written,
        Err(refused) => return refused,
    };
    let merged = state.revocations.insert(target.clone(), merged);
    let closed = close_revoked(&state.router, &target, &merged);
    state.stats.revoked_sessions(closed);
    tracing::info!(key = target.key(), closed, "token revocation");
    HttpResponse::Ok().json(json!({
        "revoked": match &target {
            Target::User(u) => json!({"user": u, "issued_before": merged.issued_before}),
            Target::Jti(j) => json!({"jti": j}),
        },
        "until": merged.until_ms / 1000,
        "closed_here": closed,
        "scope": scope(written),
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DisconnectRequest {
    user: Option<String>,
    workspace: Option<String>,
    code: Option<u16>,
    reason: Option<String>,
}

/// `POST /api/disconnect`.
pub async fn disconnect(req: HttpRequest, body: web::Bytes, state: web::Data<AppState>) -> HttpResponse {
    if let Err(refused) = guard(&req, &state) {
        return refused;
    }
    let r: DisconnectRequest = match parse(&body) {
        Ok(r) => r,
        Err(refused) => return refused,
    };
    if let Err(refused) = field("user", &r.user).and(field("workspace", &r.workspace)) {
        return refused;
    }
    let Some(user) = r.user else {
        return problem(
            400,
            "bad request",
            "`user` is required",
            Some(json!({"field": "user"})),
        );
    };
    let code = r.code.unwrap_or(close::DISCONNECTED);
    if !(code == 1000 || (3000..=4999).contains(&code)) {
        return problem(
            400,
            "bad request",
            "`code` must be 1000 or 3000 to 4999",
            Some(json!({"field": "code"})),
        );
    }
    let reason = r.reason.unwrap_or_else(|| "disconnected by the server".into());
    if reason.len() > MAX_REASON_BYTES {
        return problem(
            400,
            "bad request",
            "`reason` must be at most 120 bytes",
            Some(json!({"field": "reason"})),
        );
    }
    let order = Disconnect {
        user,
        workspace: r.workspace,
        code,
        reason,
        replica: state.presence.replica.to_string(),
        at_ms: crate::hub::handoff::unix_ms(),
    };
    let key = Disconnect::key_of(&uuid::Uuid::now_v7().to_string());
    let value = serde_json::to_string(&order).unwrap_or_default();
    let written = match write(&state, &key, Some(&value)).await {
        Ok(written) => written,
        Err(refused) => return refused,
    };
    // An order is applied once, when read: nothing of it stays in the compacted topic.
    if let Some(control) = &state.control {
        let control = control.clone();
        actix_web::rt::spawn(async move {
            let _ = control.write(&key, None).await;
        });
    }
    let closed = order.apply(&state.router);
    state.stats.disconnected_sessions(closed);
    HttpResponse::Ok().json(json!({"closed_here": closed, "code": code, "scope": scope(written)}))
}

#[derive(Deserialize)]
pub struct PresenceQuery {
    workspace: Option<String>,
    room: Option<String>,
}

/// `GET /api/presence`.
pub async fn presence(
    req: HttpRequest,
    query: web::Query<PresenceQuery>,
    state: web::Data<AppState>,
) -> HttpResponse {
    if let Err(refused) = guard(&req, &state) {
        return refused;
    }
    if !state.presence.enabled() {
        return problem(404, "presence off", "PRESENCE_ENABLED=false", None);
    }
    let max = state.settings.cluster.presence_max_listed;
    let (users, truncated) = state
        .presence
        .online(query.workspace.as_deref(), query.room.as_deref(), max);
    HttpResponse::Ok().json(json!({
        "users": users,
        "workspace": query.workspace,
        "room": query.room,
        "truncated": truncated,
        "scope": if state.control.is_some() { "cluster" } else { "replica" },
    }))
}
