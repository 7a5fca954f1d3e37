//! Admitting a session, whatever its transport (WebSocket, SSE, polling): the token, the
//! workspace, the rooms and filter asked for at connect, the limits, and a resume.
//!
//! The transports differ only in how a refusal reaches the client (a close after the upgrade,
//! an HTTP status), so the decisions live here once.

use std::sync::Arc;

use actix_web::HttpRequest;

use crate::auth::grants::RoomPattern;
use crate::auth::{AuthError, Identity};
use crate::hub::cursor::Cursor;
use crate::hub::handoff::Session;
use crate::hub::registry::{FilterChange, LimitHit, Profile, Slot};
use crate::transport::feed::{self, Feed};
use crate::AppState;

/// What a client asks for when it connects.
#[derive(Debug, Default)]
pub struct Request {
    pub token: Option<String>,
    /// `workspace_id`.
    pub workspace: Option<String>,
    /// `since`: a cursor, a Unix time in seconds (polling), or empty (positions wanted).
    pub since: Option<String>,
    /// `rooms`: joined at connect, so a resume replays their events too.
    pub rooms: Vec<String>,
    /// `event_types`: the initial filter.
    pub event_types: Vec<String>,
    /// The peer's address, for logs (and, without a token, the refusal memory).
    pub peer: Option<String>,
    /// Without `since`, take over where the user's last cursor-less session stood (WebSocket
    /// only: the existing frontends are WebSocket clients; a browser's `EventSource` resumes by
    /// itself with `Last-Event-ID`, and a poll without `since` asks for nothing old).
    pub catch_up: bool,
    /// The session counts in presence (WebSocket and SSE; not a poll).
    pub counts_in_presence: bool,
}

impl Request {
    /// Reads the token (`?token=`, `Authorization: Bearer`, or the cookie `SSE_TOKEN_COOKIE`
    /// when `cookie` is set) and the query parameters.
    pub fn from_http(req: &HttpRequest, cookie: Option<&str>) -> Self {
        let list = |name: &str| query_param(req, name).map(|v| split_list(&v)).unwrap_or_default();
        let from_cookie = || {
            let name = cookie.filter(|n| !n.is_empty())?;
            req.cookie(name).map(|c| c.value().to_string())
        };
        Request {
            token: token_from(req).or_else(from_cookie),
            workspace: query_param(req, "workspace_id").filter(|w| !w.is_empty()),
            since: query_param(req, "since"),
            rooms: list("rooms"),
            event_types: list("event_types"),
            peer: req.peer_addr().map(|a| a.ip().to_string()),
            catch_up: false,
            counts_in_presence: false,
        }
    }

    /// `since`, when it is a cursor (not empty, not a Unix time).
    pub fn cursor(&self) -> Option<&str> {
        self.since
            .as_deref()
            .filter(|s| !s.is_empty() && s.parse::<f64>().is_err())
    }
}

/// Why a resume is refused while the replica starts (the close reason, the HTTP body's).
pub const STARTING: &str = "this replica is still reading the log, so it cannot resume a cursor yet";

/// Why a session was not admitted.
#[derive(Debug)]
pub enum Refused {
    /// The token is at fault (for good): 4001 / 401.
    Token(AuthError),
    /// The signing keys could not be loaded: transient.
    KeysUnavailable(AuthError),
    /// A workspace or room the token does not grant: 4003 / 403.
    Forbidden(String),
    /// A limit, or the drain.
    Limit(LimitHit),
    /// More rooms or event types asked for at connect than allowed: 400.
    TooMany(&'static str),
    /// A resume while this replica is still reading the log at start: it cannot tell yet what
    /// the cursor missed (it would answer `recovered: false`), so transient.
    Starting,
}

/// What came of a resume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resumed {
    /// Everything missed is replayed: this many events.
    Replaying(usize),
    /// It cannot be: the client reloads its state.
    Not(&'static str),
}

/// An admitted session.
pub struct Admitted {
    pub identity: Identity,
    pub workspace: Option<Arc<str>>,
    pub slot: Slot,
    pub feed: Feed,
    /// For a resume, what came of it.
    pub resumed: Option<Resumed>,
    /// The rooms the token grants, when it grants any.
    pub room_grants: Option<Box<[RoomPattern]>>,
    /// It took over from an ended session (a client without a cursor).
    pub took_over: bool,
}

/// A rate limiter of `rate` per second with `burst` at once; none when `rate` is 0 (off).
pub fn limiter(rate: u32, burst: u32) -> Option<governor::DefaultDirectRateLimiter> {
    let rate = std::num::NonZeroU32::new(rate)?;
    let burst = std::num::NonZeroU32::new(burst).unwrap_or(rate);
    Some(governor::RateLimiter::direct(
        governor::Quota::per_second(rate).allow_burst(burst),
    ))
}

/// `CONNECT_RATE_PER_SEC`: whether one more new session may be tried now (checked before the
/// token is verified, so a storm costs little). Counted when not.
pub fn connect_allowed(state: &AppState) -> bool {
    if state.connect_limiter.as_ref().is_some_and(|l| l.check().is_err()) {
        state.stats.rate_limited("connect");
        state.stats.connection_rejected("connect_rate");
        return false;
    }
    true
}

/// Decides on a session and admits it.
pub async fn admit(state: &AppState, req: &Request) -> Result<Admitted, Refused> {
    let anonymous = req.token.is_none() && state.settings.anonymous.enabled;
    let identity = match &req.token {
        Some(token) => state.auth.verify(token).await,
        None if anonymous => Ok(anonymous_identity()),
        None => Err(AuthError::Missing),
    };
    // Revoked through the server API (on any replica): refused as a bad token is.
    let identity = identity.and_then(|identity| {
        let token = crate::hub::revocations::Token {
            user: &identity.user_id,
            jti: identity.jti.as_deref(),
            issued_at: identity.issued_at,
        };
        if state
            .revocations
            .is_revoked(&token, crate::hub::handoff::unix_ms())
        {
            return Err(AuthError::Revoked);
        }
        Ok(identity)
    });
    let identity = match identity {
        Ok(identity) => identity,
        Err(error) => {
            state.stats.auth_failed(&error, req.peer.as_deref());
            return Err(if error.is_permanent() {
                Refused::Token(error)
            } else {
                Refused::KeysUnavailable(error)
            });
        }
    };
    let workspace = if anonymous {
        // An anonymous session belongs to no workspace (workspace events never reach it).
        None
    } else {
        match identity.grants.workspace_for(req.workspace.as_deref()) {
            Ok(workspace) => workspace,
            Err(forbidden) => {
                state.stats.connection_rejected("workspace_forbidden");
                return Err(Refused::Forbidden(forbidden.to_string()));
            }
        }
    };
    // A client that sends no cursor takes over where the user's last such session stood (on any
    // replica, within CATCHUP_WINDOW_SECS): its cursor, rooms and filter.
    let catch_up = req.catch_up && req.since.is_none() && !anonymous && state.handoffs.enabled();
    // Until the replica has read the log at start it cannot tell what a cursor missed: a resume,
    // or a takeover of a recorded session, is refused as transient rather than answered
    // `recovered: false` (which would also use the record up). Other sessions are admitted.
    if state.readiness.is_gated(crate::ingest::kafka::SOURCE)
        && (req.cursor().is_some()
            || (catch_up && state.handoffs.has(workspace.as_deref(), &identity.user_id)))
    {
        state.stats.connection_rejected("starting");
        return Err(Refused::Starting);
    }
    let handoff = if catch_up {
        take_over(state, workspace.as_deref(), &identity.user_id).await
    } else {
        None
    };
    let room_grants = &identity.grants.rooms;
    let rooms_max = state.settings.rooms.max_per_session;
    let granted = |room: &str| {
        task_events::valid_room_name(room)
            && room_grants
                .iter()
                .chain(state.public_rooms.iter())
                .any(|p| p.matches(room))
    };
    let mut rooms = req.rooms.clone();
    let mut event_types = req.event_types.clone();
    if let Some(taken) = &handoff {
        // Rooms still granted by this token; the filter unless the client set its own.
        for room in &taken.rooms {
            if granted(room) && !rooms.contains(room) {
                rooms.push(room.clone());
            }
        }
        if event_types.is_empty() {
            event_types = taken.event_types.clone();
        }
    }
    let rooms = rooms;
    let event_types = event_types;
    if req.rooms.len() > rooms_max {
        return Err(Refused::TooMany("rooms"));
    }
    if req.event_types.len() > state.settings.server.max_event_filters {
        return Err(Refused::TooMany("event_types"));
    }
    for room in &req.rooms {
        if !granted(room) {
            state.stats.connection_rejected("room_forbidden");
            return Err(Refused::Forbidden(format!(
                "room {} is not granted by the token and is not public",
                room.chars().take(64).collect::<String>()
            )));
        }
    }
    let profile = Profile {
        user: identity.user_id.clone(),
        workspace: workspace.clone(),
        roles: identity.grants.roles.clone(),
        anonymous,
        jti: identity.jti.clone(),
        issued_at: identity.issued_at,
        presence: req.counts_in_presence && !anonymous,
        admitted_ms: crate::hub::handoff::unix_ms(),
        session: uuid::Uuid::new_v4().as_u128(),
    };
    let resume = req
        .cursor()
        .or(handoff.as_ref().and_then(|h| h.cursor.as_deref()))
        .map(Cursor::decode);
    let floor = resume.as_ref().and_then(|r| r.as_ref().ok().cloned());
    let admitted = state
        .router
        .admit_resuming(&state.registry, profile, resume)
        .map_err(|limit| {
            state.stats.connection_rejected(match limit {
                LimitHit::Total => "limit_total",
                LimitHit::PerUser => "limit_per_user",
                LimitHit::Anonymous => "limit_anonymous",
                LimitHit::Draining => "draining",
            });
            Refused::Limit(limit)
        })?;
    let crate::hub::router::Admitted {
        slot,
        cursor: start,
        resume,
    } = admitted;
    // Rooms and filter before the replay is counted (and read), so it includes their events.
    for room in rooms.iter().take(rooms_max) {
        let _ = state.registry.join(slot.id(), room, rooms_max);
    }
    if !event_types.is_empty() {
        let _ = state.registry.change_filter(
            slot.id(),
            FilterChange::Add(event_types),
            state.settings.server.max_event_filters,
        );
    }
    if state.user_rooms.memberships.enabled() {
        state
            .user_rooms
            .admit(slot.id(), workspace.as_deref(), &identity.user_id);
    }
    let resumed = resume.map(|r| match r {
        Ok(u64::MAX) => Resumed::Replaying(0),
        Ok(seq) => Resumed::Replaying(feed::count_replay(
            &state.router,
            &state.registry,
            slot.id(),
            seq,
            floor.as_ref().unwrap_or(&Cursor::default()),
        )),
        Err(why) => Resumed::Not(why.reason()),
    });
    // While a replay is pending the session stands where it resumed from: a client that keeps
    // this cursor and drops before the replay reached it loses nothing.
    let start = match (
        &resumed,
        req.cursor()
            .or(handoff.as_ref().and_then(|h| h.cursor.as_deref())),
    ) {
        (Some(Resumed::Replaying(n)), Some(from)) if *n > 0 => Arc::from(from),
        _ => start,
    };
    let mut feed = Feed::new(
        slot.mailbox().clone(),
        slot.id(),
        start.clone(),
        // A cursor that cannot be honoured starts live: nothing of it is a floor.
        floor.filter(|_| matches!(resumed, Some(Resumed::Replaying(_)))),
    );
    // The current state first: for a new session, and for a resume that cannot recover (the
    // client reloads). A replay brings what changed since its cursor instead.
    if !matches!(resumed, Some(Resumed::Replaying(_))) {
        feed.push_snapshot(feed::snapshot_for(
            &state.router,
            &state.registry,
            slot.id(),
            state.settings.state.snapshot_max,
            |_| true,
        ));
    }
    let room_grants = (!identity.grants.rooms.is_empty()).then(|| identity.grants.rooms.clone());
    Ok(Admitted {
        identity,
        workspace,
        slot,
        feed,
        resumed,
        room_grants,
        took_over: handoff.is_some(),
    })
}

/// The session of the user that a client without a cursor takes over, if any; it waits (a
/// second or so at most) while a replica that served the user is neither known alive nor dead.
async fn take_over(state: &AppState, workspace: Option<&str>, user: &str) -> Option<Session> {
    use crate::hub::handoff::{unix_ms, Claim};
    for _ in 0..3 {
        match state
            .handoffs
            .claim(workspace, user, unix_ms(), std::time::Instant::now())
        {
            Claim::Take(taken) => {
                if let Some(control) = &state.control {
                    control.publish_session(&taken, true);
                }
                state.stats.catchup(if taken.replica == state.handoffs.replica {
                    "here"
                } else {
                    "elsewhere"
                });
                return Some(taken);
            }
            Claim::Wait(wait) => tokio::time::sleep(wait + std::time::Duration::from_millis(10)).await,
            Claim::Nothing => return None,
        }
    }
    None
}

/// The identity of a session without a token: a user id no producer can address, and no grant.
fn anonymous_identity() -> Identity {
    Identity {
        user_id: format!("anonymous:{}", uuid::Uuid::new_v4().simple()).into(),
        valid_until: u64::MAX,
        grants: Default::default(),
        jti: None,
        issued_at: None,
    }
}

/// A query parameter, percent-decoded.
pub fn query_param(req: &HttpRequest, name: &str) -> Option<String> {
    query_value(req.query_string(), name)
}

/// The first value of `name` in a query string (without the `?`), percent-decoded; a name
/// without `=` has the empty value. Names are compared as sent, not decoded.
pub fn query_value(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then(|| percent_decode(value))
    })
}

/// A comma-separated list (`rooms`, `event_types`): trimmed, empty items left out.
pub fn split_list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

/// The token from `?token=` (what existing clients send) or `Authorization: Bearer`.
pub fn token_from(req: &HttpRequest) -> Option<String> {
    let from_query = query_param(req, "token");
    let from_header = || {
        let value = req
            .headers()
            .get(actix_web::http::header::AUTHORIZATION)?
            .to_str()
            .ok()?;
        let (scheme, token) = value.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_string())
    };
    from_query.filter(|t| !t.is_empty()).or_else(from_header)
}

/// Query values may be percent-encoded (a cursor never is: it is base64url).
pub fn percent_decode(s: &str) -> String {
    if !s.contains('%') && !s.contains('+') {
        return s.to_string();
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = |b: u8| (b as char).to_digit(16);
            if let (Some(hi), Some(lo)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((hi * 16 + lo) as u8);
                i += 3;
                continue;
            }
        }
        out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a.b.c"), "a.b.c");
        assert_eq!(percent_decode("a%2Eb"), "a.b");
        assert_eq!(percent_decode("bad%zz%4"), "bad%zz%4");
        assert_eq!(percent_decode("%é%"), "%é%");
        assert_eq!(percent_decode("a+b"), "a b");
    }

    #[test]
    fn query_values_and_lists() {
        let query = "token=t&rooms=a,%20b,,c%2Cd&since&x=1=2";
        assert_eq!(query_value(query, "token").as_deref(), Some("t"));
        assert_eq!(query_value(query, "since").as_deref(), Some(""));
        assert_eq!(query_value(query, "x").as_deref(), Some("1=2"));
        assert_eq!(query_value(query, "missing"), None);
        let rooms = query_value(query, "rooms").unwrap();
        assert_eq!(split_list(&rooms), ["a", "b", "c", "d"]);
    }
}
