//! What a verified token allows: its roles, the rooms it may join, the workspaces it may bind
//! to. Decided from the token and the configuration, never by the client alone.
//!
//! Claims read (all optional):
//! - `roles` (a list, or one string) or `role` (a string): events addressed with `to.roles`
//!   reach the session when it holds one of them;
//! - `rooms`: room names or `prefix*` patterns the session may join, beside the configured
//!   public patterns (`ROOMS_PUBLIC`);
//! - `workspace_id`: the workspace the session is bound to by default; `workspaces`: the others
//!   it may choose with `?workspace_id=`.

use std::sync::Arc;

use serde::Deserialize;

use crate::auth::AuthError;

/// Most roles, room patterns or workspaces a token may carry.
pub const MAX_GRANTS: usize = 256;
/// Longest role, room pattern or workspace name, in bytes.
pub const MAX_GRANT_BYTES: usize = 256;

/// A room name, or every room whose name starts with a prefix (`support:*`; `*` alone is every
/// room).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoomPattern {
    Exact(Box<str>),
    Prefix(Box<str>),
}

impl RoomPattern {
    pub fn parse(pattern: &str) -> Self {
        match pattern.strip_suffix('*') {
            Some(prefix) => RoomPattern::Prefix(prefix.into()),
            None => RoomPattern::Exact(pattern.into()),
        }
    }

    pub fn matches(&self, room: &str) -> bool {
        match self {
            RoomPattern::Exact(name) => &**name == room,
            RoomPattern::Prefix(prefix) => room.starts_with(&**prefix),
        }
    }
}

/// A claim that is either one string or a list of them.
#[derive(Deserialize)]
#[serde(untagged)]
pub(crate) enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

/// The grant claims as they come in the token.
#[derive(Deserialize, Default)]
pub(crate) struct GrantClaims {
    #[serde(default)]
    roles: Option<OneOrMany>,
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    rooms: Option<OneOrMany>,
    #[serde(default)]
    workspace_id: Option<String>,
    #[serde(default)]
    workspaces: Option<OneOrMany>,
}

/// What a token allows.
#[derive(Debug, Clone, Default)]
pub struct Grants {
    pub roles: Box<[Arc<str>]>,
    pub rooms: Box<[RoomPattern]>,
    /// The token's own workspace, the default binding.
    pub workspace: Option<Box<str>>,
    /// Further workspaces it may bind to.
    pub workspaces: Box<[Box<str>]>,
}

/// Why a session cannot bind to the workspace it asked for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("workspace {0} is not granted by the token")]
pub struct WorkspaceForbidden(pub String);

impl Grants {
    pub(crate) fn from_claims(claims: GrantClaims) -> Result<Self, AuthError> {
        let bounded = |claim: &'static str, values: Vec<String>| -> Result<Vec<String>, AuthError> {
            if values.len() > MAX_GRANTS || values.iter().any(|v| v.is_empty() || v.len() > MAX_GRANT_BYTES) {
                return Err(AuthError::Claim(claim));
            }
            Ok(values)
        };
        let mut roles = bounded("roles", claims.roles.map(OneOrMany::into_vec).unwrap_or_default())?;
        if let Some(role) = claims.role {
            roles.extend(bounded("role", vec![role])?);
        }
        let rooms = bounded("rooms", claims.rooms.map(OneOrMany::into_vec).unwrap_or_default())?;
        let workspaces = bounded(
            "workspaces",
            claims.workspaces.map(OneOrMany::into_vec).unwrap_or_default(),
        )?;
        let workspace = match claims.workspace_id {
            Some(ws) => bounded("workspace_id", vec![ws])?.pop(),
            None => None,
        };
        Ok(Grants {
            roles: roles.into_iter().map(Arc::from).collect(),
            rooms: rooms.iter().map(|r| RoomPattern::parse(r)).collect(),
            workspace: workspace.map(Box::from),
            workspaces: workspaces.into_iter().map(Box::from).collect(),
        })
    }

    /// The workspace a session binds to: the one it asked for when the token grants it, else
    /// the token's own.
    pub fn workspace_for(&self, requested: Option<&str>) -> Result<Option<Arc<str>>, WorkspaceForbidden> {
        match requested {
            None => Ok(self.workspace.as_deref().map(Arc::from)),
            Some(ws)
                if self.workspace.as_deref() == Some(ws) || self.workspaces.iter().any(|w| &**w == ws) =>
            {
                Ok(Some(Arc::from(ws)))
            }
            Some(ws) => Err(WorkspaceForbidden(ws.chars().take(64).collect())),
        }
    }

    /// Whether the session may join `room`: the token grants it, or it is public.
    pub fn may_join(&self, room: &str, public: &[RoomPattern]) -> bool {
        self.rooms.iter().chain(public).any(|p| p.matches(room))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grants(json: &str) -> Result<Grants, AuthError> {
        Grants::from_claims(serde_json::from_str(json).unwrap())
    }

    #[test]
    fn roles_from_a_list_a_string_or_role() {
        let g = grants(r#"{"roles":["a","b"],"role":"c"}"#).unwrap();
        assert_eq!(g.roles.iter().map(|r| &**r).collect::<Vec<_>>(), ["a", "b", "c"]);
        let g = grants(r#"{"roles":"admin"}"#).unwrap();
        assert_eq!(&*g.roles[0], "admin");
        assert!(grants("{}").unwrap().roles.is_empty());
    }

    #[test]
    fn rooms_by_name_or_prefix() {
        let public = [RoomPattern::parse("lobby"), RoomPattern::parse("public:*")];
        let g = grants(r#"{"rooms":["team-7","support:*"]}"#).unwrap();
        for ok in ["team-7", "support:", "support:42", "lobby", "public:news"] {
            assert!(g.may_join(ok, &public), "{ok}");
        }
        for no in ["team-8", "team-77", "lobby2", "suppor"] {
            assert!(!g.may_join(no, &public), "{no}");
        }
        assert!(grants(r#"{"rooms":["*"]}"#).unwrap().may_join("anything", &[]));
        assert!(!Grants::default().may_join("x", &[]));
    }

    #[test]
    fn workspaces() {
        let g = grants(r#"{"workspace_id":"w1","workspaces":["w2"]}"#).unwrap();
        assert_eq!(g.workspace_for(None).unwrap().as_deref(), Some("w1"));
        assert_eq!(g.workspace_for(Some("w2")).unwrap().as_deref(), Some("w2"));
        assert_eq!(g.workspace_for(Some("w3")), Err(WorkspaceForbidden("w3".into())));
        assert_eq!(Grants::default().workspace_for(None).unwrap(), None);
        assert!(Grants::default().workspace_for(Some("w1")).is_err());
    }

    #[test]
    fn bounded() {
        let many: Vec<String> = (0..257).map(|i| format!("r{i}")).collect();
        let json = serde_json::json!({ "rooms": many }).to_string();
        assert_eq!(grants(&json).unwrap_err(), AuthError::Claim("rooms"));
        assert_eq!(
            grants(r#"{"roles":[""]}"#).unwrap_err(),
            AuthError::Claim("roles")
        );
    }
}
