//! The upstream configuration, parsed: which backend answers which RPC method, which client
//! message types are old names for RPC calls, and who may publish to which rooms.
//!
//! - `RPC_ROUTES`: `method=backend` or `prefix*=backend`, comma-separated; the backend is an
//!   `http://` or `https://` URL (POSTed to) or `kafka:<topic>` (a request record, answered by a
//!   generic envelope addressed to the session). An exact name wins over a prefix, a longer
//!   prefix over a shorter one.
//! - `RPC_LEGACY_TYPES`: `client_type=method:answer_type`: a message `{"type": client_type, ..}`
//!   is the RPC call `method` with the whole message as its data, and the answer is sent as
//!   `{"type": answer_type, "event": answer_type, "data": <answer>}`.
//! - `CLIENT_PUBLISH_ROOMS`: `pattern=policy`, the first matching pattern decides: `deny`,
//!   `members` (sessions in the room), or `rpc:<method>` (that RPC method is asked; an answer
//!   allows, an error refuses). A room no pattern matches is denied.

use crate::config::ConfigError;

/// Longest RPC method name, in bytes.
pub const MAX_METHOD_BYTES: usize = 128;

/// Where an RPC method is answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// POST to this URL.
    Http(String),
    /// A request record on this topic.
    Kafka(String),
}

/// A name or `prefix*` pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    text: String,
    prefix: bool,
}

impl Pattern {
    fn parse(text: &str) -> Self {
        match text.strip_suffix('*') {
            Some(prefix) => Pattern {
                text: prefix.to_string(),
                prefix: true,
            },
            None => Pattern {
                text: text.to_string(),
                prefix: false,
            },
        }
    }

    pub fn matches(&self, name: &str) -> bool {
        if self.prefix {
            name.starts_with(&self.text)
        } else {
            name == self.text
        }
    }

    /// Exact names first, then longer prefixes.
    fn rank(&self) -> (bool, usize) {
        (!self.prefix, self.text.len())
    }
}

#[derive(Debug, Clone)]
pub struct Route {
    pub pattern: Pattern,
    pub backend: Backend,
}

/// An old client message type answered by an RPC method.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Legacy {
    pub client_type: String,
    pub method: String,
    pub answer_type: String,
}

/// Who may publish to a room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Policy {
    Deny,
    Members,
    Rpc(String),
}

#[derive(Debug, Clone)]
pub struct PublishRule {
    pub pattern: Pattern,
    pub policy: Policy,
}

/// Everything parsed.
#[derive(Debug, Clone, Default)]
pub struct Routes {
    rpc: Vec<Route>,
    pub legacy: Vec<Legacy>,
    publish: Vec<PublishRule>,
}

/// Method names: 1 to 128 bytes of letters, digits and `_ - . : /`.
pub fn valid_method(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_METHOD_BYTES
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.:/".contains(&b))
}

fn split<'a>(entry: &'a str, var: &str) -> Result<(&'a str, &'a str), ConfigError> {
    entry
        .split_once('=')
        .map(|(a, b)| (a.trim(), b.trim()))
        .filter(|(a, b)| !a.is_empty() && !b.is_empty())
        .ok_or_else(|| ConfigError::new(format!("{var}: {entry:?} is not `name=value`")))
}

fn pattern(text: &str, var: &str) -> Result<Pattern, ConfigError> {
    let name = text.strip_suffix('*').unwrap_or(text);
    if !(text == "*" || valid_method(name)) {
        return Err(ConfigError::new(format!(
            "{var}: {text:?} is not a name or `prefix*` pattern (letters, digits, _ - . : /)"
        )));
    }
    Ok(Pattern::parse(text))
}

impl Routes {
    /// Parses `RPC_ROUTES`, `RPC_LEGACY_TYPES` and `CLIENT_PUBLISH_ROOMS`.
    pub fn parse(rpc: &[String], legacy: &[String], publish: &[String]) -> Result<Self, ConfigError> {
        let mut routes = Routes::default();
        for entry in rpc {
            let (name, target) = split(entry, "RPC_ROUTES")?;
            let backend = if target.starts_with("http://") || target.starts_with("https://") {
                Backend::Http(target.to_string())
            } else if let Some(topic) = target.strip_prefix("kafka:").filter(|t| !t.is_empty()) {
                Backend::Kafka(topic.to_string())
            } else {
                return Err(ConfigError::new(format!(
                    "RPC_ROUTES: the backend of {name:?} must be an http(s):// URL or kafka:<topic>"
                )));
            };
            routes.rpc.push(Route {
                pattern: pattern(name, "RPC_ROUTES")?,
                backend,
            });
        }
        routes.rpc.sort_by_key(|r| std::cmp::Reverse(r.pattern.rank()));
        for entry in legacy {
            let (client_type, target) = split(entry, "RPC_LEGACY_TYPES")?;
            let (method, answer_type) = target.split_once(':').ok_or_else(|| {
                ConfigError::new(format!(
                    "RPC_LEGACY_TYPES: {entry:?} is not `client_type=method:answer_type`"
                ))
            })?;
            if ![client_type, method, answer_type].iter().all(|n| valid_method(n)) {
                return Err(ConfigError::new(format!(
                    "RPC_LEGACY_TYPES: {entry:?} has an empty or invalid name"
                )));
            }
            if let Some(t) = [client_type, answer_type]
                .into_iter()
                .find(|t| crate::upstream::RESERVED_TYPES.contains(t))
            {
                return Err(ConfigError::new(format!(
                    "RPC_LEGACY_TYPES: {t:?} is a message type of the protocol itself"
                )));
            }
            routes.legacy.push(Legacy {
                client_type: client_type.to_string(),
                method: method.to_string(),
                answer_type: answer_type.to_string(),
            });
        }
        for entry in publish {
            let (name, policy) = split(entry, "CLIENT_PUBLISH_ROOMS")?;
            let room = name.strip_suffix('*').unwrap_or(name);
            if !(name == "*" || task_events::valid_room_name(room)) {
                return Err(ConfigError::new(format!(
                    "CLIENT_PUBLISH_ROOMS: {name:?} is not a room name or `prefix*` pattern"
                )));
            }
            let policy = match policy {
                "deny" => Policy::Deny,
                "members" => Policy::Members,
                other => match other.strip_prefix("rpc:").filter(|m| valid_method(m)) {
                    Some(method) => Policy::Rpc(method.to_string()),
                    None => {
                        return Err(ConfigError::new(format!(
                        "CLIENT_PUBLISH_ROOMS: the policy of {name:?} must be deny, members or rpc:<method>"
                    )))
                    }
                },
            };
            routes.publish.push(PublishRule {
                pattern: Pattern::parse(name),
                policy,
            });
        }
        for rule in &routes.publish {
            if let Policy::Rpc(method) = &rule.policy {
                if routes.backend(method).is_none() {
                    return Err(ConfigError::new(format!(
                        "CLIENT_PUBLISH_ROOMS: no RPC_ROUTES entry answers method {method:?}"
                    )));
                }
            }
        }
        for legacy in &routes.legacy {
            if routes.backend(&legacy.method).is_none() {
                return Err(ConfigError::new(format!(
                    "RPC_LEGACY_TYPES: no RPC_ROUTES entry answers method {:?}",
                    legacy.method
                )));
            }
        }
        Ok(routes)
    }

    /// The backend answering `method`.
    pub fn backend(&self, method: &str) -> Option<&Backend> {
        self.rpc
            .iter()
            .find(|r| r.pattern.matches(method))
            .map(|r| &r.backend)
    }

    /// The legacy mapping of a client message type.
    pub fn legacy(&self, client_type: &str) -> Option<&Legacy> {
        self.legacy.iter().find(|l| l.client_type == client_type)
    }

    /// Who may publish to `room` (deny when no rule matches).
    pub fn publish_policy(&self, room: &str) -> &Policy {
        self.publish
            .iter()
            .find(|r| r.pattern.matches(room))
            .map_or(&Policy::Deny, |r| &r.policy)
    }

    /// Whether any room may be published to (then the publish topic is read).
    pub fn publishes(&self) -> bool {
        self.publish.iter().any(|r| r.policy != Policy::Deny)
    }

    /// Whether some method is answered over Kafka.
    pub fn uses_kafka(&self) -> bool {
        self.rpc.iter().any(|r| matches!(r.backend, Backend::Kafka(_)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn exact_names_win_then_longer_prefixes() {
        let routes = Routes::parse(
            &list(&[
                "*=http://all",
                "metrics.*=kafka:metrics-requests",
                "metrics.live.*=http://live",
                "metrics.get=http://get",
            ]),
            &[],
            &[],
        )
        .unwrap();
        assert_eq!(
            routes.backend("metrics.get"),
            Some(&Backend::Http("http://get".into()))
        );
        assert_eq!(
            routes.backend("metrics.live.x"),
            Some(&Backend::Http("http://live".into()))
        );
        assert_eq!(
            routes.backend("metrics.other"),
            Some(&Backend::Kafka("metrics-requests".into()))
        );
        assert_eq!(
            routes.backend("tasks.list"),
            Some(&Backend::Http("http://all".into()))
        );
        let none = Routes::parse(&list(&["a=http://a"]), &[], &[]).unwrap();
        assert_eq!(none.backend("b"), None);
    }

    #[test]
    fn publish_rules_first_match_and_deny_by_default() {
        let routes = Routes::parse(
            &list(&["check.*=http://c"]),
            &[],
            &list(&[
                "typing:*=members",
                "announce:*=rpc:check.publish",
                "typing:secret=deny",
            ]),
        )
        .unwrap();
        assert_eq!(routes.publish_policy("typing:42"), &Policy::Members);
        assert_eq!(routes.publish_policy("typing:secret"), &Policy::Members);
        assert_eq!(
            routes.publish_policy("announce:all"),
            &Policy::Rpc("check.publish".into())
        );
        assert_eq!(routes.publish_policy("lobby"), &Policy::Deny);
        assert!(routes.publishes());
        assert!(!Routes::default().publishes());
    }

    #[test]
    fn bad_entries_are_refused_with_the_variable_named() {
        for (rpc, legacy, publish, needle) in [
            (vec!["m"], vec![], vec![], "RPC_ROUTES"),
            (vec!["m=ftp://x"], vec![], vec![], "RPC_ROUTES"),
            (vec!["m=kafka:"], vec![], vec![], "RPC_ROUTES"),
            (vec!["bad name=http://x"], vec![], vec![], "RPC_ROUTES"),
            (
                vec![],
                vec!["request_metrics=metrics.get"],
                vec![],
                "RPC_LEGACY_TYPES",
            ),
            (vec!["a=http://a"], vec!["ping=a:b"], vec![], "RPC_LEGACY_TYPES"),
            (vec!["a=http://a"], vec!["x=a:error"], vec![], "RPC_LEGACY_TYPES"),
            (vec![], vec!["x=unrouted:y"], vec![], "RPC_LEGACY_TYPES"),
            (vec![], vec![], vec!["r=maybe"], "CLIENT_PUBLISH_ROOMS"),
            (vec![], vec![], vec!["r=rpc:unrouted"], "CLIENT_PUBLISH_ROOMS"),
            (vec![], vec![], vec!["bad room=members"], "CLIENT_PUBLISH_ROOMS"),
        ] {
            let error = Routes::parse(&list(&rpc), &list(&legacy), &list(&publish)).unwrap_err();
            assert!(error.to_string().contains(needle), "{error}");
        }
        let legacy = Routes::parse(
            &list(&["metrics.*=http://m"]),
            &list(&["request_metrics=metrics.get:metrics"]),
            &[],
        )
        .unwrap();
        assert_eq!(
            legacy.legacy("request_metrics").map(|l| l.answer_type.as_str()),
            Some("metrics")
        );
    }
}
