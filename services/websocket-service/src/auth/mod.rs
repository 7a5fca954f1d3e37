//! Token verification: who is connecting.
//!
//! One verifier per deployment, chosen by configuration: an HS256 shared secret, a PEM public key
//! (RS256, ES256 or EdDSA) or a JWKS URL. The accepted algorithm is pinned to the key, so a token
//! cannot pick its own (`alg: none`, or an HS256 token "signed" with an RSA public key, fail).
//! `exp` and `sub` are required; `nbf` is checked when present; `iss` and `aud` when configured.

pub mod grants;

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use parking_lot::RwLock;
use serde::Deserialize;

use crate::config::AuthSettings;
use crate::health::Readiness;

/// Longer `jti` claims are ignored (not a token that a revocation by `jti` could name).
const MAX_JTI_BYTES: usize = 256;

/// The authenticated peer.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The `sub` claim: events addressed to this user id reach the session.
    pub user_id: Arc<str>,
    /// Until when the token is accepted, as a Unix time: its `exp` plus the verification leeway
    /// (the same leeway that admitted it). The session is closed with 4002 then. `u64::MAX`
    /// with `TOKEN_EXPIRY_POLICY=connect` or a token without `exp`.
    pub valid_until: u64,
    /// What the token allows: roles, rooms, workspaces.
    pub grants: grants::Grants,
    /// The `jti` claim: a revocation may name the token by it.
    pub jti: Option<Arc<str>>,
    /// The `iat` claim: a revocation of the user covers the tokens issued before it.
    pub issued_at: Option<u64>,
}

/// Why a token was refused. The `reason()` is the close reason sent to the client and the label
/// of the auth-failure counter.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("missing token")]
    Missing,
    #[error("malformed token")]
    Malformed,
    #[error("invalid signature")]
    BadSignature,
    #[error("token algorithm not accepted")]
    Algorithm,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("wrong issuer")]
    Issuer,
    #[error("wrong audience")]
    Audience,
    #[error("missing claim")]
    MissingClaim,
    #[error("unknown signing key")]
    UnknownKey,
    #[error("signing keys unavailable")]
    KeysUnavailable,
    /// A grant claim is out of bounds (too many entries, an empty or overlong name).
    #[error("claim `{0}` out of bounds")]
    Claim(&'static str),
    /// Revoked with `POST /api/revoke` (by user, or by `jti`).
    #[error("token revoked")]
    Revoked,
}

impl AuthError {
    /// Whether the token itself is at fault (refused for good), rather than this replica
    /// (signing keys it could not load: the same token may pass a moment later).
    pub fn is_permanent(&self) -> bool {
        !matches!(self, AuthError::KeysUnavailable)
    }

    /// A stable snake_case label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::Malformed => "malformed",
            AuthError::BadSignature => "bad_signature",
            AuthError::Algorithm => "algorithm",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::Issuer => "issuer",
            AuthError::Audience => "audience",
            AuthError::MissingClaim => "missing_claim",
            AuthError::UnknownKey => "unknown_key",
            AuthError::KeysUnavailable => "keys_unavailable",
            AuthError::Claim(_) => "claim",
            AuthError::Revoked => "revoked",
        }
    }
}

impl From<jsonwebtoken::errors::Error> for AuthError {
    fn from(e: jsonwebtoken::errors::Error) -> Self {
        use jsonwebtoken::errors::ErrorKind as K;
        match e.kind() {
            K::InvalidSignature => AuthError::BadSignature,
            K::InvalidAlgorithm | K::InvalidAlgorithmName | K::InvalidKeyFormat => AuthError::Algorithm,
            K::ExpiredSignature => AuthError::Expired,
            K::ImmatureSignature => AuthError::NotYetValid,
            K::InvalidIssuer => AuthError::Issuer,
            K::InvalidAudience => AuthError::Audience,
            K::MissingRequiredClaim(_) | K::InvalidSubject => AuthError::MissingClaim,
            _ => AuthError::Malformed,
        }
    }
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    /// Required unless `JWT_REQUIRE_EXP=false`.
    exp: Option<u64>,
    /// RFC 7519 allows a fractional `iat`; only a number counts.
    #[serde(default)]
    iat: Option<serde_json::Value>,
    /// Only a string `jti` can be named by a revocation.
    #[serde(default)]
    jti: Option<serde_json::Value>,
    #[serde(flatten)]
    grants: grants::GrantClaims,
}

/// Verifies tokens; cheap to share (`Arc`).
pub struct Authenticator {
    keys: Keys,
    /// Issuer/audience/leeway rules; `algorithms` is set per key at verification.
    base: Validation,
    /// `TOKEN_EXPIRY_POLICY=connect`: sessions are not ended at `exp`.
    check_at_connect_only: bool,
}

enum Keys {
    Static { key: DecodingKey, alg: Algorithm },
    Jwks(Jwks),
}

impl Authenticator {
    /// Builds the verifier named by the settings. A JWKS is fetched in the background right away;
    /// `readiness` reports `jwks` not ready until it has been loaded once.
    pub fn from_settings(s: &AuthSettings, readiness: &Readiness) -> anyhow::Result<Arc<Self>> {
        let mut base = Validation::new(Algorithm::HS256);
        base.leeway = s.leeway_secs;
        base.validate_nbf = true;
        if s.require_exp {
            base.set_required_spec_claims(&["exp", "sub"]);
        } else {
            base.set_required_spec_claims(&["sub"]);
        }
        match s.jwt_audience.as_deref().filter(|a| !a.is_empty()) {
            Some(aud) => base.set_audience(&[aud]),
            None => base.validate_aud = false,
        }
        if let Some(iss) = s.jwt_issuer.as_deref().filter(|i| !i.is_empty()) {
            base.set_issuer(&[iss]);
        }
        let keys = if let Some(secret) = s.jwt_secret.as_deref().filter(|v| !v.is_empty()) {
            Keys::Static {
                key: DecodingKey::from_secret(secret.as_bytes()),
                alg: Algorithm::HS256,
            }
        } else if let Some(pem) = s.jwt_public_key.as_deref().filter(|v| !v.is_empty()) {
            let pem = read_pem(pem)?;
            let (key, alg) = public_key(&pem, s.jwt_algorithm.as_deref())?;
            Keys::Static { key, alg }
        } else if let Some(url) = s.jwt_jwks_url.as_deref().filter(|v| !v.is_empty()) {
            Keys::Jwks(Jwks::new(url, s, readiness.clone())?)
        } else {
            anyhow::bail!("no token verifier configured");
        };
        let auth = Arc::new(Authenticator {
            keys,
            base,
            check_at_connect_only: s.expiry_policy == "connect",
        });
        if matches!(auth.keys, Keys::Jwks(_)) {
            readiness.gate("jwks", "signing keys not loaded yet");
            tokio::spawn(refresh_jwks(Arc::downgrade(&auth)));
        }
        Ok(auth)
    }

    /// Verifies a token and returns who it names.
    pub async fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed)?;
        let claims = match &self.keys {
            Keys::Static { key, alg } => self.decode(token, key, *alg)?,
            Keys::Jwks(jwks) => {
                let (key, alg) = jwks.key_for(header.kid.as_deref()).await?;
                self.decode(token, &key, alg)?
            }
        };
        if claims.sub.is_empty() {
            return Err(AuthError::MissingClaim);
        }
        Ok(Identity {
            user_id: claims.sub.into(),
            valid_until: match claims.exp {
                Some(exp) if !self.check_at_connect_only => exp.saturating_add(self.base.leeway),
                // No `exp` (allowed by configuration), or checked at connect only.
                _ => u64::MAX,
            },
            grants: grants::Grants::from_claims(claims.grants)?,
            jti: claims
                .jti
                .as_ref()
                .and_then(|j| j.as_str())
                .filter(|j| !j.is_empty() && j.len() <= MAX_JTI_BYTES)
                .map(Arc::from),
            issued_at: claims
                .iat
                .as_ref()
                .and_then(serde_json::Value::as_f64)
                .filter(|t| t.is_finite() && *t >= 0.0)
                .map(|t| t.floor() as u64),
        })
    }

    fn decode(&self, token: &str, key: &DecodingKey, alg: Algorithm) -> Result<Claims, AuthError> {
        let mut validation = self.base.clone();
        validation.algorithms = vec![alg];
        Ok(jsonwebtoken::decode::<Claims>(token, key, &validation)?.claims)
    }
}

/// Accepts the PEM itself or a path to a PEM file (a mounted Kubernetes secret).
fn read_pem(value: &str) -> anyhow::Result<Vec<u8>> {
    if value.trim_start().starts_with("-----BEGIN") {
        return Ok(value.as_bytes().to_vec());
    }
    std::fs::read(value).map_err(|e| anyhow::anyhow!("JWT_PUBLIC_KEY: cannot read PEM file {value}: {e}"))
}

fn public_key(pem: &[u8], alg: Option<&str>) -> anyhow::Result<(DecodingKey, Algorithm)> {
    let explicit = match alg.filter(|a| !a.is_empty()) {
        Some(name) => Some(
            name.parse::<Algorithm>()
                .map_err(|_| anyhow::anyhow!("JWT_ALGORITHM: unknown algorithm {name}"))?,
        ),
        None => None,
    };
    let guesses = match explicit {
        Some(a) => vec![a],
        None => vec![Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA],
    };
    for alg in &guesses {
        let key = match alg {
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512 => DecodingKey::from_rsa_pem(pem),
            Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(pem),
            Algorithm::EdDSA => DecodingKey::from_ed_pem(pem),
            _ => anyhow::bail!(
                "JWT_ALGORITHM: {alg:?} is not a public-key algorithm; use JWT_SECRET for HS256"
            ),
        };
        if let Ok(key) = key {
            return Ok((key, *alg));
        }
    }
    anyhow::bail!(
        "JWT_PUBLIC_KEY: not a PEM RSA, EC P-256 or Ed25519 public key (or it does not match JWT_ALGORITHM)"
    )
}

/// Keeps the JWKS fresh for as long as the authenticator lives: fetched at once, then again
/// after the lifetime its answer announces (`Cache-Control: max-age`, bounded by
/// `JWKS_MIN_REFRESH_SECS`..`JWKS_MAX_REFRESH_SECS`), or `JWKS_REFRESH_SECS` when it announces
/// none. A key removed from the set stops being accepted at the next refresh.
async fn refresh_jwks(auth: Weak<Authenticator>) {
    loop {
        let next = {
            let Some(auth) = auth.upgrade() else { return };
            let Keys::Jwks(jwks) = &auth.keys else { return };
            jwks.refresh(true).await
        };
        tokio::time::sleep(next).await;
    }
}

/// A JWKS endpoint's keys, cached by `kid`.
struct Jwks {
    url: String,
    client: reqwest::Client,
    keys: RwLock<HashMap<String, (DecodingKey, Algorithm)>>,
    /// Serialises fetches (one in flight) and remembers when the last one started.
    last_fetch: tokio::sync::Mutex<Option<Instant>>,
    min_refresh: Duration,
    max_refresh: Duration,
    default_refresh: Duration,
    readiness: Readiness,
}

impl Jwks {
    fn new(url: &str, s: &AuthSettings, readiness: Readiness) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(s.jwks_timeout_ms))
            .build()?;
        Ok(Jwks {
            url: url.to_string(),
            client,
            keys: RwLock::new(HashMap::new()),
            last_fetch: tokio::sync::Mutex::new(None),
            min_refresh: Duration::from_secs(s.jwks_min_refresh_secs),
            max_refresh: Duration::from_secs(s.jwks_max_refresh_secs),
            default_refresh: Duration::from_secs(s.jwks_refresh_secs),
            readiness,
        })
    }

    async fn key_for(&self, kid: Option<&str>) -> Result<(DecodingKey, Algorithm), AuthError> {
        if let Some(found) = self.lookup(kid) {
            return Ok(found);
        }
        // An unknown kid may be a rotated key: refetch, at most once per `min_refresh`.
        self.refresh(false).await;
        if let Some(found) = self.lookup(kid) {
            return Ok(found);
        }
        if self.keys.read().is_empty() {
            return Err(AuthError::KeysUnavailable);
        }
        Err(AuthError::UnknownKey)
    }

    fn lookup(&self, kid: Option<&str>) -> Option<(DecodingKey, Algorithm)> {
        let keys = self.keys.read();
        match kid {
            Some(kid) => keys.get(kid).cloned(),
            // A token without `kid` is accepted only when the set has exactly one key.
            None if keys.len() == 1 => keys.values().next().cloned(),
            None => None,
        }
    }

    /// Fetches the key set. With `force` false, skips when the last fetch is recent. Returns when
    /// the next scheduled fetch is due.
    async fn refresh(&self, force: bool) -> Duration {
        let mut last = self.last_fetch.lock().await;
        if !force && last.is_some_and(|t| t.elapsed() < self.min_refresh) {
            return self.default_refresh;
        }
        *last = Some(Instant::now());
        match self.fetch().await {
            Ok((keys, max_age)) => {
                tracing::debug!(url = %self.url, keys = keys.len(), "jwks loaded");
                let usable = !keys.is_empty();
                // Replaced even when empty: an issuer that withdrew every key means it.
                *self.keys.write() = keys;
                if usable {
                    self.readiness.open("jwks");
                    self.readiness.recover("jwks");
                } else {
                    self.readiness.problem("jwks", "the JWKS holds no usable key");
                }
                max_age
                    .unwrap_or(self.default_refresh)
                    .clamp(self.min_refresh.max(Duration::from_secs(1)), self.max_refresh)
            }
            Err(error) => {
                tracing::warn!(url = %self.url, %error, "jwks fetch failed");
                if self.keys.read().is_empty() {
                    self.readiness.gate("jwks", format!("jwks never loaded: {error}"));
                } else {
                    self.readiness.degrade(
                        "jwks",
                        format!("jwks refresh failed, keeping the last keys: {error}"),
                    );
                }
                // Try again soon, but not in a loop.
                self.min_refresh.max(Duration::from_secs(1)).min(self.max_refresh)
            }
        }
    }

    /// The key set, and the cache lifetime the answer announced.
    async fn fetch(&self) -> anyhow::Result<(HashMap<String, (DecodingKey, Algorithm)>, Option<Duration>)> {
        let response = self.client.get(&self.url).send().await?.error_for_status()?;
        let max_age = response
            .headers()
            .get(reqwest::header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .and_then(max_age);
        let set: JwkSet = response.json().await?;
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            let Some(kid) = jwk.common.key_id.clone() else {
                continue;
            };
            let Some(alg) = jwk_algorithm(jwk) else { continue };
            match DecodingKey::from_jwk(jwk) {
                Ok(key) => {
                    keys.insert(kid, (key, alg));
                }
                Err(error) => tracing::warn!(kid, %error, "jwks key skipped"),
            }
        }
        Ok((keys, max_age))
    }
}

/// `max-age` of a `Cache-Control` value; `no-cache`/`no-store` count as zero.
fn max_age(value: &str) -> Option<Duration> {
    value.split(',').map(str::trim).find_map(|directive| {
        let lower = directive.to_ascii_lowercase();
        if lower == "no-cache" || lower == "no-store" {
            return Some(Duration::ZERO);
        }
        let secs = lower.strip_prefix("max-age=")?;
        secs.trim_matches('"').parse().ok().map(Duration::from_secs)
    })
}

/// The algorithm a JWK is for: its `alg` when given, else the usual one for its key type.
fn jwk_algorithm(jwk: &Jwk) -> Option<Algorithm> {
    if let Some(alg) = jwk.common.key_algorithm {
        return alg.to_string().parse().ok();
    }
    match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Some(Algorithm::RS256),
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => Some(Algorithm::ES256),
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P384 => Some(Algorithm::ES384),
        AlgorithmParameters::OctetKeyPair(_) => Some(Algorithm::EdDSA),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_lifetimes() {
        assert_eq!(max_age("public, max-age=600"), Some(Duration::from_secs(600)));
        assert_eq!(max_age("Max-Age=\"30\""), Some(Duration::from_secs(30)));
        assert_eq!(max_age("no-store"), Some(Duration::ZERO));
        assert_eq!(max_age("public"), None);
        assert_eq!(max_age("max-age=soon"), None);
    }
}
