//! One cluster, one truth (issue 10): presence, revocation, disconnects and rate limits across
//! replicas that share nothing but the broker. Each test has its own control topic, so the
//! replicas of other tests are not part of its cluster.

use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{json, Value};

use crate::audiences::API_KEY;
use crate::harness::*;

/// A cluster's settings: one events topic, one control topic, presence on with a short grace.
async fn cluster_env() -> Vec<(String, String)> {
    let brokers = brokers();
    let topic = create_topic(&brokers, 1).await;
    let control = unique("control");
    create_topic_named(&brokers, &control, 1).await;
    let mut env = env_for(Some(&brokers), Some(&topic));
    set(&mut env, "GATEWAY_CONTROL_TOPIC", &control);
    set(&mut env, "SERVER_API_KEY", API_KEY);
    set(&mut env, "PRESENCE_ENABLED", "true");
    set(&mut env, "PRESENCE_GRACE_SECS", "2");
    set(&mut env, "PRESENCE_LEASE_SECS", "3");
    set(&mut env, "ROOMS_PUBLIC", "lobby");
    env
}

async fn started(env: &[(String, String)]) -> TestGateway {
    let gw = TestGateway::start(env.to_vec()).await;
    gw.wait_ready().await;
    gw
}

fn ws_token(user: &str, ws: &str) -> String {
    token_claims(user, json!({"workspace_id": ws, "iat": now_secs()}))
}

/// The server API on the internal listener.
async fn api(
    gw_internal: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: Option<Value>,
    key: &str,
) -> (u16, Value) {
    let client = http();
    let url = format!("http://{gw_internal}{path}");
    let req = match method {
        "GET" => client.get(url),
        _ => client.post(url).json(&body.unwrap_or(Value::Null)),
    };
    let resp = req.bearer_auth(key).send().await.expect("server API");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// The presence messages a client receives within `window` (nothing else may arrive).
async fn presence_within(client: &mut Client, window: Duration) -> Vec<(String, String)> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + window;
    loop {
        let next = tokio::time::timeout_at(deadline, recv_json(&mut client.ws)).await;
        let Ok(msg) = next else { return seen };
        let kind = msg["type"].as_str().unwrap_or_default().to_string();
        assert!(kind.starts_with("user."), "only presence expected: {msg}");
        assert_eq!(msg["event"], msg["type"]);
        seen.push((kind, msg["data"]["user_id"].as_str().unwrap().to_string()));
    }
}

/// Waits until `client` gets `kind` for `user`; fails on anything else.
async fn expect_presence(client: &mut Client, kind: &str, user: &str, limit: Duration) {
    let got = tokio::time::timeout(limit, recv_json(&mut client.ws))
        .await
        .unwrap_or_else(|_| panic!("no {kind} for {user} within {limit:?}"));
    assert_eq!(
        (got["type"].as_str(), got["data"]["user_id"].as_str()),
        (Some(kind), Some(user)),
        "{got}"
    );
}

/// Waits until `gw`'s server API lists `users` online for `query` (`workspace=W`, `room=R`).
async fn wait_presence(gw: &TestGateway, query: &str, users: &Value) {
    let deadline = Instant::now() + WAIT;
    loop {
        let path = format!("/api/presence?{query}");
        let (status, answer) = api(gw.internal, "GET", &path, None, API_KEY).await;
        assert_eq!(status, 200, "{answer}");
        if &answer["users"] == users {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "presence on {}: {answer}, expected {users}",
            gw.addr
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn ask_presence(client: &mut Client, room: Option<&str>) -> Value {
    let mut ask = json!({"type": "presence"});
    if let Some(room) = room {
        ask["room"] = json!(room);
    }
    let reply = client.ask(ask).await;
    assert_eq!(reply["type"], "presence", "{reply}");
    reply["data"].clone()
}

/// Online and offline across two replicas; a second tab, a tab on the other replica and a
/// reload within the grace send nothing; other workspaces are not told; the query and the
/// server API answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_is_cluster_wide_and_quiet_for_tabs_and_reloads() {
    let env = cluster_env().await;
    let a = started(&env).await;
    let b = started(&env).await;
    let mut observer = connect(&b.url(&ws_token("obs", "w1"))).await;
    let mut other_ws = connect(&b.url(&ws_token("zed", "w2"))).await;
    // It is told nothing of itself; wait until the other replica knows of it (else a session
    // there would rightly be told `obs` came online, later).
    assert!(presence_within(&mut observer, Duration::from_millis(300))
        .await
        .is_empty());
    wait_presence(&a, "workspace=w1", &json!(["obs"])).await;

    let alice = token_claims("alice", json!({"workspace_id": "w1", "iat": now_secs()}));
    let mut tab1 = connect(&a.url(&alice)).await;
    expect_presence(&mut observer, "user.online", "alice", WAIT).await;
    // Alice's tab was told of the observer? No: only transitions after it connected.
    let mut tab2 = connect(&a.url(&alice)).await;
    let mut tab3 = connect(&b.url(&alice)).await;
    assert!(
        presence_within(&mut observer, Duration::from_millis(1200))
            .await
            .is_empty(),
        "a second tab, here or on another replica, sends nothing"
    );
    // The query, here and there, and the server API, from either replica.
    tab1.join("lobby").await;
    let everyone = ask_presence(&mut observer, None).await;
    assert_eq!(everyone["users"], json!(["alice", "obs"]), "{everyone}");
    assert_eq!(everyone["workspace_id"], "w1");
    observer.join("lobby").await;
    // Both records carry the room once each replica flushed (every 200 ms) and B read A's.
    wait_presence(&b, "workspace=w1&room=lobby", &json!(["alice", "obs"])).await;
    let in_lobby = ask_presence(&mut observer, Some("lobby")).await;
    assert_eq!(in_lobby["users"], json!(["alice", "obs"]), "{in_lobby}");
    let refused = observer
        .ask(json!({"type": "presence", "room": "elsewhere"}))
        .await;
    assert_eq!(
        (refused["type"].as_str(), refused["code"].as_str()),
        (Some("error"), Some("forbidden"))
    );
    let (status, answer) = api(a.internal, "GET", "/api/presence?workspace=w1", None, API_KEY).await;
    assert_eq!(
        (status, &answer["users"]),
        (200, &json!(["alice", "obs"])),
        "{answer}"
    );
    assert_eq!(
        api(
            a.internal,
            "GET",
            "/api/presence?workspace=w1",
            None,
            "wrong-key-0123456789"
        )
        .await
        .0,
        401
    );
    // A reload: every tab closes, one comes back within the grace.
    for tab in [&mut tab1, &mut tab2, &mut tab3] {
        tab.ws.close(None).await.unwrap();
    }
    // Closed on both replicas (B keeps the observer and the other workspace's session).
    a.wait_connections(0).await;
    b.wait_connections(2).await;
    let mut back = connect(&a.url(&alice)).await;
    assert!(
        presence_within(&mut observer, Duration::from_secs(3))
            .await
            .is_empty(),
        "a reload within the grace sends nothing"
    );
    // Gone for good: offline after the grace, once.
    back.ws.close(None).await.unwrap();
    expect_presence(&mut observer, "user.offline", "alice", WAIT).await;
    assert!(presence_within(&mut observer, Duration::from_millis(800))
        .await
        .is_empty());
    // The other workspace heard nothing of w1's users.
    assert!(presence_within(&mut other_ws, Duration::from_millis(200))
        .await
        .is_empty());
    other_ws.assert_nothing_pending().await;
    a.stop().await;
    b.stop().await;
}

/// `kill -9` of a replica: its users go offline for the others within the lease, except one who
/// is connected elsewhere too; a replica started afterwards answers `presence` correctly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replica_s_users_go_offline_within_the_lease() {
    let env = cluster_env().await;
    let a = ServiceProcess::spawn_env(&env).await;
    let b = started(&env).await;
    let a_url = |t: &str| format!("ws://{}/ws?token={t}", a.base());
    let mut observer = connect(&b.url(&ws_token("obs", "w1"))).await;
    let deadline = Instant::now() + WAIT;
    let mut killed = loop {
        // The process may still be reading the control topic: retry until it serves.
        if let Ok((mut ws, _)) = tokio_tungstenite::connect_async(a_url(&ws_token("gone", "w1"))).await {
            let hello = recv_json(&mut ws).await;
            assert_eq!(hello["type"], "connected");
            break ws;
        }
        assert!(Instant::now() < deadline, "A does not serve");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (mut both_a, _) = tokio_tungstenite::connect_async(a_url(&ws_token("both", "w1")))
        .await
        .unwrap();
    recv_json(&mut both_a).await;
    let mut online = Vec::new();
    for _ in 0..2 {
        let msg = recv_json(&mut observer.ws).await;
        assert_eq!(msg["type"], "user.online", "{msg}");
        online.push(msg["data"]["user_id"].as_str().unwrap().to_string());
    }
    online.sort();
    assert_eq!(online, ["both", "gone"]);
    let _both_b = connect(&b.url(&ws_token("both", "w1"))).await;
    assert!(presence_within(&mut observer, Duration::from_millis(800))
        .await
        .is_empty());
    a.signal("KILL");
    let killed_at = Instant::now();
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(Ok(_)) = futures_util::StreamExt::next(&mut killed).await {}
    })
    .await;
    expect_presence(&mut observer, "user.offline", "gone", WAIT).await;
    let took = killed_at.elapsed();
    assert!(
        took < Duration::from_secs(3 + 5),
        "offline {took:?} after the kill (lease 3 s)"
    );
    assert!(
        presence_within(&mut observer, Duration::from_millis(1500))
            .await
            .is_empty(),
        "a user connected elsewhere stays online"
    );
    // A replica that starts now learns the current presence from the control topic.
    let c = started(&env).await;
    let mut late = connect(&c.url(&ws_token("late", "w1"))).await;
    wait_presence(&c, "workspace=w1", &json!(["both", "late", "obs"])).await;
    let now = ask_presence(&mut late, None).await;
    assert_eq!(now["users"], json!(["both", "late", "obs"]), "{now}");
    drop(both_a);
    b.stop().await;
    c.stop().await;
}

fn token_at(user: &str, iat: u64, jti: Option<&str>) -> String {
    let mut claims = json!({"sub": user, "exp": now_secs() + 3600, "iat": iat});
    if let Some(jti) = jti {
        claims["jti"] = json!(jti);
    }
    token_with(
        Algorithm::HS256,
        &EncodingKey::from_secret(SECRET.as_bytes()),
        claims,
    )
}

/// Revocation by user, by jti and by issue time closes the sessions on both replicas with 4001
/// `revoked` and refuses the tokens at connect, also on a replica started afterwards; a
/// disconnect closes without revoking; seed-style clients stop on a revocation and come back
/// after a disconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocations_and_disconnects_reach_every_replica() {
    let mut env = cluster_env().await;
    // These sessions have no workspace: with presence on, each would be told of the others.
    set(&mut env, "PRESENCE_ENABLED", "false");
    let a = started(&env).await;
    let b = started(&env).await;
    let now = now_secs();
    let u1 = token_at("u1", now - 10, None);
    let (mut u1_a, _) = tokio_tungstenite::connect_async(a.url(&u1)).await.unwrap();
    let (mut u1_b, _) = tokio_tungstenite::connect_async(b.url(&u1)).await.unwrap();
    let j = token_at("u2", now - 10, Some("jti-revoked"));
    let k = token_at("u2", now - 10, Some("jti-kept"));
    let (mut u2_j, _) = tokio_tungstenite::connect_async(b.url(&j)).await.unwrap();
    let mut u2_k = connect(&a.url(&k)).await;
    let old = token_at("u3", now - 100, None);
    let fresh = token_at("u3", now - 10, None);
    let (mut u3_old, _) = tokio_tungstenite::connect_async(a.url(&old)).await.unwrap();
    let mut u3_fresh = connect(&b.url(&fresh)).await;
    for ws in [&mut u1_a, &mut u1_b, &mut u2_j, &mut u3_old] {
        assert_eq!(recv_json(ws).await["type"], "connected");
    }
    // A seed-style client of u1 (reconnects after every close, gives up after 5 tries).
    let seed_u1 = {
        let (addr, tok) = (b.addr, u1.clone());
        SeedClient::start(move || format!("ws://{addr}/ws?token={tok}"))
    };
    seed_u1.wait_for(WAIT, |l| l.opened == 1).await;
    // Bad key, bad bodies.
    assert_eq!(
        api(
            a.internal,
            "POST",
            "/api/revoke",
            Some(json!({"user": "u1"})),
            "wrong-key-0123456789"
        )
        .await
        .0,
        401
    );
    assert_eq!(
        api(a.internal, "POST", "/api/revoke", Some(json!({})), API_KEY)
            .await
            .0,
        400
    );
    assert_eq!(
        api(
            a.internal,
            "POST",
            "/api/revoke",
            Some(json!({"user": "u1", "jti": "x"})),
            API_KEY
        )
        .await
        .0,
        400
    );
    assert_eq!(
        api(
            a.internal,
            "POST",
            "/api/revoke",
            Some(json!({"usr": "u1"})),
            API_KEY
        )
        .await
        .0,
        400
    );
    let huge = json!({"user": "u1", "pad": "x".repeat(5000)});
    let (status, _) = api(a.internal, "POST", "/api/revoke", Some(huge), API_KEY).await;
    assert_eq!(status, 413, "bodies are bounded");

    let started_at = Instant::now();
    let (status, answer) = api(
        a.internal,
        "POST",
        "/api/revoke",
        Some(json!({"user": "u1"})),
        API_KEY,
    )
    .await;
    assert_eq!(
        (status, answer["scope"].as_str()),
        (200, Some("cluster")),
        "{answer}"
    );
    assert_eq!(wait_close(&mut u1_a, 4001).await, "revoked");
    assert_eq!(wait_close(&mut u1_b, 4001).await, "revoked");
    let took = started_at.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "closed on both replicas in {took:?}"
    );
    let (_, answer) = api(
        b.internal,
        "POST",
        "/api/revoke",
        Some(json!({"jti": "jti-revoked"})),
        API_KEY,
    )
    .await;
    assert_eq!(answer["revoked"]["jti"], "jti-revoked");
    assert_eq!(wait_close(&mut u2_j, 4001).await, "revoked");
    api(
        b.internal,
        "POST",
        "/api/revoke",
        Some(json!({"user": "u3", "issued_before": now - 50})),
        API_KEY,
    )
    .await;
    assert_eq!(wait_close(&mut u3_old, 4001).await, "revoked");
    // What was not named stays.
    u2_k.assert_nothing_pending().await;
    u3_fresh.assert_nothing_pending().await;
    // The seed-style client stops within its tries instead of looping.
    let log = seed_u1.wait_for(Duration::from_secs(40), |l| l.gave_up).await;
    // Its session, then at most six attempts (one closed with 4001, then refused at the upgrade).
    assert!(log.gave_up && log.attempts <= 7, "{log:?}");
    assert_eq!(log.closes.first(), Some(&4001));
    // Refused at connect on every replica, also one started after the revocation; a token
    // issued after it works.
    let c = started(&env).await;
    for gw in [&a, &c] {
        let reason = expect_close(&gw.url(&u1), 4001).await;
        assert!(reason.contains("revoked"), "{reason}");
    }
    expect_close(&c.url(&j), 4001).await;
    expect_close(&c.url(&old), 4001).await;
    let mut relogin = connect(&c.url(&token_at("u1", now_secs() + 2, None))).await;
    relogin.assert_nothing_pending().await;
    let _fresh_again = connect(&c.url(&fresh)).await;
    let metrics = c.metrics().await;
    assert!(metrics.contains("gateway_revocations 3"), "{metrics}");

    // Disconnect: closed everywhere with the code given, nothing revoked.
    let u4 = token("u4");
    let mut u4_a = connect(&a.url(&u4)).await;
    let seed_u4 = {
        let (addr, tok) = (c.addr, u4.clone());
        SeedClient::start(move || format!("ws://{addr}/ws?token={tok}"))
    };
    seed_u4.wait_for(WAIT, |l| l.opened == 1).await;
    assert_eq!(
        api(
            b.internal,
            "POST",
            "/api/disconnect",
            Some(json!({"user": "u4", "code": 999})),
            API_KEY
        )
        .await
        .0,
        400
    );
    let long_reason = json!({"user": "u4", "reason": "r".repeat(121)});
    let (status, _) = api(b.internal, "POST", "/api/disconnect", Some(long_reason), API_KEY).await;
    assert_eq!(status, 400, "a close reason fits a close frame");
    let (status, answer) = api(
        b.internal,
        "POST",
        "/api/disconnect",
        Some(json!({"user": "u4", "reason": "role changed"})),
        API_KEY,
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(wait_close(&mut u4_a.ws, 4010).await, "role changed");
    let log = seed_u4.wait_for(WAIT, |l| l.opened >= 2).await;
    assert_eq!((log.closes.first(), log.opened), (Some(&4010), 2), "{log:?}");
    let _u4_again = connect(&a.url(&u4)).await;
    a.stop().await;
    b.stop().await;
    c.stop().await;
}

/// Per-session message rate: `rate_limited` errors, then 4009 when it goes on; per-replica
/// connection rate: accepted, then 1013 with a retry hint (a transient refusal).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_are_hit_and_answered() {
    let mut env = env_for(None, None);
    // One token a second: a stall of the test between the burst and the next message does not
    // refill the bucket.
    set(&mut env, "CLIENT_MESSAGES_PER_SEC", "1");
    set(&mut env, "CLIENT_MESSAGES_BURST", "5");
    set(&mut env, "CONNECT_RATE_PER_SEC", "1");
    set(&mut env, "CONNECT_RATE_BURST", "3");
    set(&mut env, "OVERLOAD_CLOSE_DELAY_MS", "100");
    let gw = TestGateway::start(env).await;
    gw.wait_ready().await;
    // Three at once pass, the fourth is refused as a transient condition.
    let mut clients = Vec::new();
    for i in 0..3 {
        clients.push(connect(&gw.url(&token(&format!("r{i}")))).await);
    }
    let reason = expect_close(&gw.url(&token("r3")), 1013).await;
    assert!(reason.contains("too many new connections"), "{reason}");
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains(r#"gateway_rate_limited_total{kind="connect"} 1"#),
        "{metrics}"
    );
    // Five messages at once are answered; the next ones are refused, each with an error.
    let client = &mut clients[0];
    for _ in 0..6 {
        client.send(r#"{"type":"ping"}"#).await;
    }
    for _ in 0..5 {
        assert_eq!(client.recv().await["type"], "pong");
    }
    let refused = client.recv().await;
    assert_eq!(
        (refused["type"].as_str(), refused["code"].as_str()),
        (Some("error"), Some("rate_limited")),
        "{refused}"
    );
    // Going on regardless: closed with 4009 after a burst's worth of refusals.
    for _ in 0..10 {
        client.send(r#"{"type":"ping"}"#).await;
    }
    let reason = wait_close(&mut client.ws, 4009).await;
    assert!(reason.contains("rate limited"), "{reason}");
    // The limit is per session: another one is served as before.
    clients[1].assert_nothing_pending().await;
    gw.stop().await;
}
