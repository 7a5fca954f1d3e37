//! Every way a token can be wrong closes the socket with 4001 after the upgrade, and nothing is
//! delivered to it; the accepted key types and sources work.

use std::sync::atomic::Ordering;
use std::time::Duration;

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::json;

use crate::harness::*;

const UNAUTHORIZED: u16 = 4001;

fn b64(v: &serde_json::Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_closed_with_4001() {
    let mut env = env_for(None, None);
    set(&mut env, "JWT_ISSUER", "https://auth.example");
    set(&mut env, "JWT_AUDIENCE", "tasks");
    set(&mut env, "JWT_LEEWAY_SECS", "0");
    let gw = TestGateway::start(env).await;
    let key = EncodingKey::from_secret(SECRET.as_bytes());
    let good = json!({"sub": "u", "exp": now_secs() + 600, "iss": "https://auth.example", "aud": "tasks"});
    let with = |patch: serde_json::Value| {
        let mut claims = good.clone();
        for (k, v) in patch.as_object().unwrap() {
            if v.is_null() {
                claims.as_object_mut().unwrap().remove(k);
            } else {
                claims[k] = v.clone();
            }
        }
        claims
    };
    let alg_none = format!("{}.{}.", b64(&json!({"alg": "none", "typ": "JWT"})), b64(&good));
    let cases: Vec<(&str, String)> = vec![
        ("missing", String::new()),
        ("malformed", "not.a.jwt".into()),
        ("alg none", alg_none),
        (
            "forged",
            token_with(
                Algorithm::HS256,
                &EncodingKey::from_secret(b"another-secret-0123456789"),
                good.clone(),
            ),
        ),
        (
            "expired",
            token_with(Algorithm::HS256, &key, with(json!({"exp": now_secs() - 10}))),
        ),
        (
            "no exp",
            token_with(Algorithm::HS256, &key, with(json!({"exp": null}))),
        ),
        (
            "no sub",
            token_with(Algorithm::HS256, &key, with(json!({"sub": null}))),
        ),
        (
            "not yet valid",
            token_with(Algorithm::HS256, &key, with(json!({"nbf": now_secs() + 600}))),
        ),
        (
            "wrong issuer",
            token_with(
                Algorithm::HS256,
                &key,
                with(json!({"iss": "https://evil.example"})),
            ),
        ),
        (
            "wrong audience",
            token_with(Algorithm::HS256, &key, with(json!({"aud": "billing"}))),
        ),
    ];
    for (name, token) in &cases {
        let reason = expect_close(&gw.url(token), UNAUTHORIZED).await;
        assert!(reason.starts_with("unauthorized"), "{name}: reason {reason}");
    }
    assert_eq!(
        websocket_service::telemetry::Stats::get(&gw.stats.auth_failures),
        cases.len() as u64
    );

    // The good token, by query and by Authorization header.
    let ok = token_with(Algorithm::HS256, &key, good.clone());
    let client = connect(&gw.url(&ok)).await;
    assert_eq!(client.hello["user_id"], "u");
    let request = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(format!(
        "ws://{}/ws",
        gw.addr
    ))
    .unwrap();
    let mut request = request;
    request
        .headers_mut()
        .insert("Authorization", format!("Bearer {ok}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(recv_json(&mut ws).await["type"], "connected");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_that_expires_while_connected_closes_the_session() {
    let mut env = env_for(None, None);
    set(&mut env, "JWT_LEEWAY_SECS", "0");
    let gw = TestGateway::start(env).await;
    let key = EncodingKey::from_secret(SECRET.as_bytes());
    let short = token_with(
        Algorithm::HS256,
        &key,
        json!({"sub": "brief", "exp": now_secs() + 2}),
    );
    let mut client = connect(&gw.url(&short)).await;
    let reason = tokio::time::timeout(Duration::from_secs(6), wait_close(&mut client.ws, 4002))
        .await
        .expect("closed when the token expired");
    assert!(reason.contains("expired"), "{reason}");
    gw.stop().await;
}

/// RS256 and EdDSA public keys; the algorithm is pinned to the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_keys_pin_their_algorithm() {
    let claims = json!({"sub": "pk", "exp": now_secs() + 600});

    let mut env = env_for(None, None);
    env.retain(|(k, _)| k != "JWT_SECRET");
    set(&mut env, "JWT_PUBLIC_KEY", &fixture("rsa-public.pem"));
    let rsa = TestGateway::start(env.clone()).await;
    let rsa_key = EncodingKey::from_rsa_pem(fixture("rsa-private.pem").as_bytes()).unwrap();
    let ok = token_with(Algorithm::RS256, &rsa_key, claims.clone());
    assert_eq!(connect(&rsa.url(&ok)).await.hello["user_id"], "pk");
    let other = EncodingKey::from_rsa_pem(fixture("rsa-other-private.pem").as_bytes()).unwrap();
    expect_close(
        &rsa.url(&token_with(Algorithm::RS256, &other, claims.clone())),
        UNAUTHORIZED,
    )
    .await;
    // HS/RS confusion: an HS256 token "signed" with the public key as the secret.
    let confused = EncodingKey::from_secret(fixture("rsa-public.pem").as_bytes());
    expect_close(
        &rsa.url(&token_with(Algorithm::HS256, &confused, claims.clone())),
        UNAUTHORIZED,
    )
    .await;
    rsa.stop().await;

    set(&mut env, "JWT_PUBLIC_KEY", &fixture("ed25519-public.pem"));
    let ed = TestGateway::start(env).await;
    let ed_key = EncodingKey::from_ed_pem(fixture("ed25519-private.pem").as_bytes()).unwrap();
    assert_eq!(
        connect(&ed.url(&token_with(Algorithm::EdDSA, &ed_key, claims.clone())))
            .await
            .hello["user_id"],
        "pk"
    );
    expect_close(
        &ed.url(&token_with(Algorithm::RS256, &rsa_key, claims)),
        UNAUTHORIZED,
    )
    .await;
    ed.stop().await;
}

/// A JWKS served over HTTP: fetched once and cached, refetched for an unknown `kid` at most once
/// per `JWKS_MIN_REFRESH_SECS`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_keys_are_cached_and_refreshed_on_unknown_kid() {
    let jwks = JwksServer::start().await;
    let fetches = jwks.fetches.clone();
    let jwks_url = jwks.url();
    let mut env = env_for(None, None);
    env.retain(|(k, _)| k != "JWT_SECRET");
    set(&mut env, "JWT_JWKS_URL", &jwks_url);
    set(&mut env, "JWKS_MIN_REFRESH_SECS", "60");
    let gw = TestGateway::start(env).await;
    gw.wait_ready().await;

    let key = EncodingKey::from_ed_pem(fixture("ed25519-private.pem").as_bytes()).unwrap();
    let mut header = jsonwebtoken::Header::new(Algorithm::EdDSA);
    header.kid = Some("k1".into());
    let claims = json!({"sub": "jw", "exp": now_secs() + 600});
    let good = jsonwebtoken::encode(&header, &claims, &key).unwrap();
    for _ in 0..5 {
        connect(&gw.url(&good)).await;
    }
    assert_eq!(
        fetches.load(Ordering::SeqCst),
        1,
        "one fetch for many connections"
    );

    header.kid = Some("rotated-away".into());
    let unknown = jsonwebtoken::encode(&header, &claims, &key).unwrap();
    expect_close(&gw.url(&unknown), UNAUTHORIZED).await;
    // The same token again: refused at the upgrade (see refusals), with no JWKS fetch either.
    for _ in 0..2 {
        expect_refused_at_upgrade(&gw.url(&unknown), 401).await;
    }
    // The first unknown kid may refetch (the last fetch was at start, less than a minute ago: no).
    assert_eq!(
        fetches.load(Ordering::SeqCst),
        1,
        "unknown kids do not hammer the issuer"
    );
    gw.stop().await;
}
