//! The existing frontends as written (issue 15): seed-style clients through refusals, expiries
//! and overload. `SeedClient` (harness) behaves exactly as docs/wire-contract.md describes.

use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::json;

use crate::harness::*;

/// Item 1: an expired token makes at most six connection attempts, then the client stops: the
/// first is a close after open (4001, so the reason is visible), the next ones are refused at
/// the upgrade, which the client counts as failed tries. Before, every attempt opened and
/// reset the client's counter, and it reconnected every second forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_makes_at_most_six_attempts_then_stops() {
    let gw = TestGateway::start(env_for(None, None)).await;
    let expired = token_with(
        Algorithm::HS256,
        &EncodingKey::from_secret(SECRET.as_bytes()),
        json!({"sub": "stale", "exp": now_secs() - 3600}),
    );
    let url = gw.url(&expired);
    let client = SeedClient::start(move || url.clone());
    // 1 + 2 + 4 + 8 + 16 s of backoff, and some slack.
    let log = client.wait_for(Duration::from_secs(45), |log| log.gave_up).await;
    assert!(log.gave_up, "the client stopped: {log:?}");
    assert_eq!(log.attempts, 6, "{log:?}");
    assert_eq!(log.opened, 1, "only the first attempt opened: {log:?}");
    assert_eq!(log.closes, vec![4001], "{log:?}");
    gw.stop().await;
}

/// Item 1: a forbidden workspace and too many sessions are refused for good the same way, with
/// the HTTP status saying which at the upgrade; a new token is not refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_refusals_are_refused_at_the_upgrade_the_second_time() {
    let mut env = env_for(None, None);
    set(&mut env, "MAX_CONNECTIONS_PER_USER", "1");
    let gw = TestGateway::start(env).await;
    let t = token_claims("ws-user", json!({"workspace_id": "w1"}));
    let forbidden = format!("{}&workspace_id=w2", gw.url(&t));
    expect_close(&forbidden, 4003).await;
    let body = expect_refused_at_upgrade(&forbidden, 403).await;
    assert_eq!(body["close_code"], 4003);
    // The same token without the forbidden workspace is fine.
    let _first = connect(&gw.url(&t)).await;
    // A second session of the user: 4029 after open, then 429 at the upgrade.
    expect_close(&gw.url(&t), 4029).await;
    let body = expect_refused_at_upgrade(&gw.url(&t), 429).await;
    assert_eq!(body["close_code"], 4029);
    // Garbage tokens: 4001, then 401.
    expect_close(&gw.url("garbage"), 4001).await;
    expect_refused_at_upgrade(&gw.url("garbage"), 401).await;
    gw.stop().await;
}

/// Item 1: a transient refusal (this replica is full) never makes such a client give up: it is
/// a paced close after open, and the client connects once there is room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_replica_never_makes_a_seed_client_give_up() {
    let mut env = env_for(None, None);
    set(&mut env, "MAX_CONNECTIONS", "1");
    set(&mut env, "OVERLOAD_CLOSE_DELAY_MS", "600");
    let gw = TestGateway::start(env).await;
    let holder = connect(&gw.url(&token("holder"))).await;
    let url = gw.url(&token("waiting"));
    let client = SeedClient::start(move || url.clone());
    // Longer than five failed tries would last.
    let log = client
        .wait_for(Duration::from_secs(12), |log| log.closes.len() >= 6)
        .await;
    assert!(!log.gave_up, "{log:?}");
    assert!(log.closes.iter().all(|c| *c == 1013), "{log:?}");
    assert_eq!(log.opened, log.attempts, "every attempt opened: {log:?}");
    drop(holder);
    let log = client
        .wait_for(Duration::from_secs(20), |log| {
            log.messages.iter().any(|m| m["type"] == "connected")
        })
        .await;
    assert!(
        log.messages.iter().any(|m| m["type"] == "connected"),
        "connected once there was room: {log:?}"
    );
    gw.stop().await;
}

/// Item 2: TOKEN_EXPIRY_POLICY=connect checks the token at connect only (for frontends that
/// cannot refresh), and JWT_REQUIRE_EXP=false accepts tokens without `exp`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_policy_connect_and_tokens_without_exp() {
    let key = EncodingKey::from_secret(SECRET.as_bytes());
    let no_exp = token_with(Algorithm::HS256, &key, json!({"sub": "forever"}));
    let gw = TestGateway::start(env_for(None, None)).await;
    expect_close(&gw.url(&no_exp), 4001).await;
    gw.stop().await;

    let mut env = env_for(None, None);
    set(&mut env, "TOKEN_EXPIRY_POLICY", "connect");
    set(&mut env, "JWT_REQUIRE_EXP", "false");
    set(&mut env, "JWT_LEEWAY_SECS", "0");
    let gw = TestGateway::start(env).await;
    let short = token_with(
        Algorithm::HS256,
        &key,
        json!({"sub": "brief", "exp": now_secs() + 1}),
    );
    let mut brief = connect(&gw.url(&short)).await;
    let mut forever = connect(&gw.url(&no_exp)).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    brief.assert_nothing_pending().await;
    forever.assert_nothing_pending().await;
    gw.stop().await;
}

/// Item 7: an anonymous dashboard (no token, ANONYMOUS_ENABLED) gets `all` broadcasts and public
/// rooms, nothing addressed to users, roles or workspaces; it may not join a private room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anonymous_dashboard_gets_broadcasts_and_nothing_addressed_to_users() {
    let mut env = env_for(None, None);
    set(&mut env, "ANONYMOUS_ENABLED", "true");
    set(&mut env, "ROOMS_PUBLIC", "status");
    set(&mut env, "SERVER_API_KEY", crate::audiences::API_KEY);
    let gw = TestGateway::start(env).await;
    let mut dash = connect(&format!("ws://{}/ws", gw.addr)).await;
    assert!(dash.hello["user_id"].as_str().unwrap().starts_with("anonymous:"));
    dash.join("status").await;
    let refused = dash.ask(json!({"type": "join_room", "room": "private"})).await;
    assert_eq!(refused["code"], "forbidden");
    let user_id = dash.hello["user_id"].as_str().unwrap().to_string();
    let events = json!([
        {"event_type": "dm", "data": {}, "to": {"user": user_id}},
        {"event_type": "admins", "data": {}, "to": {"roles": ["admin"]}},
        {"event_type": "ws", "data": {}, "to": {"workspace": "w1"}},
        {"event_type": "ws-all", "data": {}, "to": {"all": true, "workspace": "w1"}},
        {"event_type": "task.created", "user_id": user_id, "task": {}},
        {"event_type": "status.update", "data": {"ok": true}, "to": {"room": "status"}},
        {"event_type": "announcement", "data": {}, "to": {"all": true}},
    ]);
    let (status, _) = gw.publish(crate::audiences::API_KEY, &events).await;
    assert_eq!(status, 202);
    assert_eq!(dash.recv().await["type"], "status.update");
    assert_eq!(dash.recv().await["type"], "announcement");
    dash.assert_nothing_pending().await;
    gw.stop().await;
}

/// Item 3: rooms that belong to the user. A helpdesk-style client joins its room once and never
/// again; after the replica it was on is replaced, the new replica (which rebuilt the
/// memberships from the control topic) still delivers the room's events to it. A second tab of
/// the same user on another replica is in the room without joining.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_joined_once_survives_a_restart() {
    use crate::audiences::API_KEY;
    let brokers = brokers();
    let topic = create_topic(&brokers, 1).await;
    let control = unique("control");
    create_topic_named(&brokers, &control, 1).await;
    let env = || {
        let mut env = env_for(Some(&brokers), Some(&topic));
        set(&mut env, "GATEWAY_CONTROL_TOPIC", &control);
        set(&mut env, "ROOMS_USER_SCOPED", "support:*");
        set(&mut env, "SERVER_API_KEY", API_KEY);
        set(&mut env, "DRAIN_WINDOW_SECS", "0");
        set(&mut env, "SHUTDOWN_GRACE_SECS", "3");
        env
    };
    let first = TestGateway::start(env()).await;
    first.wait_ready().await;
    let other = TestGateway::start(env()).await;
    other.wait_ready().await;
    let tok = token_claims("agent-7", json!({"rooms": ["support:*"]}));
    let url = Arc::new(std::sync::Mutex::new(first.url(&tok)));
    let current = url.clone();
    let join = json!({"type": "join_room", "room": "support:42"}).to_string();
    let helpdesk = SeedClient::start_with(move || current.lock().unwrap().clone(), vec![join]);
    helpdesk
        .wait_for(WAIT, |log| {
            log.messages.iter().any(|m| m["type"] == "joined_room")
        })
        .await;
    // Another tab of the user, on the other replica, never joins.
    let mut tab = connect(&other.url(&tok)).await;
    let room_event =
        |n: i32| json!({"event_type": "ticket.note", "data": {"n": n}, "to": {"room": "support:42"}});
    // The membership reaches the other replica through the control topic.
    let deadline = std::time::Instant::now() + WAIT;
    let mut n = 0;
    loop {
        n += 1;
        assert_eq!(first.publish(API_KEY, &room_event(n)).await.0, 202);
        let got = tokio::time::timeout(Duration::from_millis(1500), tab.recv()).await;
        if let Ok(msg) = got {
            assert_eq!(msg["type"], "ticket.note");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the other tab never got the room's events"
        );
    }
    // The replica the helpdesk client is on is replaced by a new one.
    first.stop().await;
    let replacement = TestGateway::start(env()).await;
    replacement.wait_ready().await;
    *url.lock().unwrap() = replacement.url(&tok);
    let log = helpdesk
        .wait_for(Duration::from_secs(30), |log| log.opened >= 2)
        .await;
    assert!(log.opened >= 2, "the client reconnected: {log:?}");
    let before = log.messages.len();
    assert_eq!(replacement.publish(API_KEY, &room_event(1000)).await.0, 202);
    let log = helpdesk
        .wait_for(WAIT, |log| {
            log.messages[before..].iter().any(|m| m["data"]["n"] == 1000)
        })
        .await;
    assert!(
        log.messages[before..]
            .iter()
            .any(|m| m["data"]["n"] == 1000 && m["room"] == "support:42"),
        "the room's event reached the client after the restart without a new join: {log:?}"
    );
    // Leaving ends it (earlier room events may still be queued before the answer).
    tab.send(&json!({"type": "leave_room", "room": "support:42"}).to_string())
        .await;
    loop {
        let msg = tab.recv().await;
        if msg["type"] == "left_room" {
            break;
        }
        assert_eq!(msg["type"], "ticket.note", "{msg}");
    }
    replacement.stop().await;
    other.stop().await;
}

/// Item 5: clients that never send a cursor still miss nothing. One replica is drained while
/// events flow; every seed-style client reconnects (after its 1 s backoff) to the other replica,
/// which takes over where its session stood (told through the control topic), and every event
/// produced meanwhile reaches it once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_loses_nothing_for_clients_without_a_cursor() {
    let brokers = brokers();
    let topic = create_topic(&brokers, 1).await;
    let control = unique("control");
    create_topic_named(&brokers, &control, 1).await;
    let env = || {
        let mut env = env_for(Some(&brokers), Some(&topic));
        set(&mut env, "GATEWAY_CONTROL_TOPIC", &control);
        set(&mut env, "DRAIN_WINDOW_SECS", "1");
        set(&mut env, "SHUTDOWN_GRACE_SECS", "4");
        env
    };
    let a = TestGateway::start(env()).await;
    let b = TestGateway::start(env()).await;
    a.wait_ready().await;
    b.wait_ready().await;
    let users: Vec<String> = (0..6).map(|i| format!("seed-{i}")).collect();
    let target = Arc::new(std::sync::Mutex::new(a.addr));
    let clients: Vec<SeedClient> = users
        .iter()
        .map(|user| {
            let (target, tok) = (target.clone(), token(user));
            SeedClient::start(move || format!("ws://{}/ws?token={tok}", target.lock().unwrap()))
        })
        .collect();
    for client in &clients {
        client
            .wait_for(WAIT, |log| log.messages.iter().any(|m| m["type"] == "connected"))
            .await;
    }
    let producer = producer(&brokers);
    let per_user = 40;
    let produce_all = {
        let (users, topic) = (users.clone(), topic.clone());
        tokio::spawn(async move {
            for seq in 0..per_user {
                for user in &users {
                    produce(
                        &producer,
                        &topic,
                        user,
                        &task_event(user, "task.updated", json!({"seq": seq})),
                    )
                    .await;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // The Service stops sending new connections to A; A drains.
    *target.lock().unwrap() = b.addr;
    a.stop().await;
    produce_all.await.unwrap();
    for (user, client) in users.iter().zip(&clients) {
        let log = client
            .wait_for(WAIT, |log| {
                log.messages
                    .iter()
                    .any(|m| m["type"] == "task_update" && m["task"]["seq"] == per_user - 1)
            })
            .await;
        let seqs: Vec<i64> = log
            .messages
            .iter()
            .filter(|m| m["type"] == "task_update")
            .map(|m| m["task"]["seq"].as_i64().unwrap())
            .collect();
        assert_eq!(
            seqs,
            (0..per_user).collect::<Vec<_>>(),
            "{user}: every event once, in order"
        );
        assert!(
            log.opened >= 2 && log.closes.contains(&1001),
            "{user} moved over: {log:?}"
        );
        assert!(!log.gave_up);
    }
    b.stop().await;
}

/// Item 5, a replica killed (SIGKILL: no drain, no last word). Its clients reconnect to the other
/// replica, which knows from the control topic which sessions the dead one served and, from its
/// last beat, where they stood. Clients that got nothing near the kill lose nothing and get
/// nothing twice; clients that got events right up to the kill lose nothing, get everything in
/// order, and at most the events of the last beats before the kill again (at least once: what a
/// killed process wrote last is known only to its clients).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replica_loses_nothing_for_clients_without_a_cursor() {
    let brokers = brokers();
    let topic = create_topic(&brokers, 1).await;
    let control = unique("control");
    create_topic_named(&brokers, &control, 1).await;
    let mut env = env_for(Some(&brokers), Some(&topic));
    set(&mut env, "GATEWAY_CONTROL_TOPIC", &control);
    set(&mut env, "CATCHUP_HEARTBEAT_MS", "100");
    set(&mut env, "ROOMS_PUBLIC", "lobby");
    let a = ServiceProcess::spawn_env(&env).await;
    let b = TestGateway::start(env.clone()).await;
    b.wait_ready().await;
    a.wait_ready().await;
    let target = Arc::new(std::sync::Mutex::new(a.base()));
    let start = |user: &str, first: Vec<String>| {
        let (target, tok) = (target.clone(), token(user));
        SeedClient::start_with(
            move || format!("ws://{}/ws?token={tok}", target.lock().unwrap()),
            first,
        )
    };
    let quiet: Vec<String> = (0..3).map(|i| format!("quiet-{i}")).collect();
    let busy: Vec<String> = (0..3).map(|i| format!("busy-{i}")).collect();
    let join = json!({"type": "join_room", "room": "lobby"}).to_string();
    let quiet_clients: Vec<SeedClient> = quiet.iter().map(|u| start(u, vec![join.clone()])).collect();
    let busy_clients: Vec<SeedClient> = busy.iter().map(|u| start(u, vec![])).collect();
    for client in quiet_clients.iter() {
        client
            .wait_for(WAIT, |log| {
                log.messages.iter().any(|m| m["type"] == "joined_room")
            })
            .await;
    }
    for client in busy_clients.iter() {
        client
            .wait_for(WAIT, |log| log.messages.iter().any(|m| m["type"] == "connected"))
            .await;
    }
    let producer = producer(&brokers);
    let send = {
        let (producer, topic) = (producer.clone(), topic.clone());
        move |user: &String, seq: i64| {
            let (producer, topic, user) = (producer.clone(), topic.clone(), user.clone());
            async move {
                produce(
                    &producer,
                    &topic,
                    &user,
                    &task_event(&user, "task.updated", json!({"seq": seq})),
                )
                .await
            }
        }
    };
    let seqs_of = |log: &SeedLog| -> Vec<i64> {
        log.messages
            .iter()
            .filter(|m| m["type"] == "task_update")
            .map(|m| m["task"]["seq"].as_i64().unwrap())
            .collect()
    };
    // The quiet ones get 0..5 well before the kill; the busy ones get events every 20 ms.
    for user in &quiet {
        for seq in 0..5 {
            send(user, seq).await;
        }
    }
    let per_busy = 150;
    let busy_flow = {
        let (busy, send) = (busy.clone(), send.clone());
        tokio::spawn(async move {
            for seq in 0..per_busy {
                for user in &busy {
                    send(user, seq).await;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    for client in &quiet_clients {
        client.wait_for(WAIT, |log| seqs_of(log).contains(&4)).await;
    }
    // Several beats, then the kill, in the middle of the busy flow.
    tokio::time::sleep(Duration::from_millis(800)).await;
    *target.lock().unwrap() = b.addr.to_string();
    a.signal("KILL");
    for user in &quiet {
        for seq in 5..10 {
            send(user, seq).await;
        }
    }
    // A room the quiet ones joined once, on A: the takeover re-joined it.
    let lobby = json!({"event_type": "lobby.news", "data": {"n": 1}, "to": {"room": "lobby"}});
    produce(&producer, &topic, "lobby", lobby.to_string().as_bytes()).await;
    busy_flow.await.unwrap();
    for (user, client) in quiet.iter().zip(&quiet_clients) {
        let log = client
            .wait_for(Duration::from_secs(20), |log| seqs_of(log).contains(&9))
            .await;
        assert_eq!(
            seqs_of(&log),
            (0..10).collect::<Vec<_>>(),
            "{user}: exactly once, in order"
        );
        assert!(log.opened >= 2 && !log.gave_up, "{user}: {log:?}");
        let log = client
            .wait_for(WAIT, |log| log.messages.iter().any(|m| m["type"] == "lobby.news"))
            .await;
        let news: Vec<_> = log
            .messages
            .iter()
            .filter(|m| m["type"] == "lobby.news")
            .collect();
        assert_eq!(news.len(), 1, "{user}: the room's event, once");
        assert_eq!(news[0]["room"], "lobby");
    }
    let mut again = 0;
    for (user, client) in busy.iter().zip(&busy_clients) {
        let log = client
            .wait_for(Duration::from_secs(20), |log| {
                seqs_of(log).contains(&(per_busy - 1))
            })
            .await;
        let seqs = seqs_of(&log);
        // One run up to the kill, then one from a point at or before where it stopped.
        let seam = (1..seqs.len())
            .find(|&i| seqs[i] <= seqs[i - 1])
            .unwrap_or(seqs.len());
        let (before, after) = seqs.split_at(seam);
        assert_eq!(
            before,
            (0..before.len() as i64).collect::<Vec<_>>(),
            "{user}: in order before"
        );
        let from = after.first().copied().unwrap_or(before.len() as i64);
        assert!(
            from <= before.len() as i64,
            "{user}: no gap at the seam: {seqs:?}"
        );
        assert_eq!(
            after,
            (from..per_busy).collect::<Vec<_>>(),
            "{user}: in order after"
        );
        again += before.len() as i64 - from;
    }
    let metrics = b.metrics().await;
    assert!(
        metrics.contains("gateway_catchups_total{reason=\"elsewhere\"} 6"),
        "every client was taken over from the dead replica: {again} events again\n{metrics}"
    );
    // Beats every 100 ms, events every 20 ms: the last two beats hold about 10 per client.
    assert!(again <= 3 * 20, "{again} events again for 3 busy clients");
    b.stop().await;
}
