//! The dashboard: `GET /api/stats` behind the API key, the page at `/admin`,
//! both off without `--api-key`; the numbers follow real traffic and agree
//! with `/metrics`.

mod common;

use common::Server;
use serde_json::{json, Value};

const KEY: &str = "dash-key-42";

fn parse(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body:?}"))
}

/// This server's entry of `GET /api/stats`.
async fn stats(server: &Server) -> Value {
    let (status, body) = server.http("GET", "/api/stats", Some(KEY), None).await;
    assert_eq!(status, 200, "{body}");
    let stats = parse(&body);
    let nodes = stats["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 1, "a single server is one node: {stats}");
    nodes[0].clone()
}

fn n(value: &Value) -> u64 {
    value
        .as_u64()
        .unwrap_or_else(|| panic!("not a count: {value}"))
}

#[tokio::test]
async fn everything_is_off_without_an_api_key() {
    let server = Server::start();
    for path in [
        "/api/stats",
        "/admin",
        "/admin/admin.js",
        "/admin/admin.css",
    ] {
        let (status, body) = server.http("GET", path, Some("anything"), None).await;
        assert_eq!(status, 404, "{path}: {body}");
    }
}

#[tokio::test]
async fn stats_need_the_key_but_the_page_does_not() {
    let server = Server::start_with(&["--api-key", KEY]);
    let (status, body) = server.http_get("/api/stats").await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(parse(&body)["error"]["code"], "unauthorized");
    let (status, _) = server
        .http("GET", "/api/stats", Some("dash-key-43"), None)
        .await;
    assert_eq!(status, 401);

    // A browser cannot send the key on a navigation: the page comes without
    // it, holds no numbers, and asks for the key.
    let (status, page) = server.http_get("/admin").await;
    assert_eq!(status, 200);
    assert!(page.contains(r#"id="key""#) && page.contains("/admin/admin.js"));
    for path in ["/admin/admin.js", "/admin/admin.css"] {
        assert_eq!(server.http_get(path).await.0, 200, "{path}");
    }
}

#[tokio::test]
async fn stats_move_with_traffic_and_agree_with_metrics() {
    let server = Server::start_with(&["--api-key", KEY]);
    let before = stats(&server).await;
    assert_eq!(n(&before["connections"]), 0);
    assert_eq!(before["busiest_rooms"], json!([]));
    let buckets = before["fanout_seconds"]["buckets"].as_array().unwrap();
    assert!(!buckets.is_empty() && buckets.iter().all(|b| b["count"] == 0));
    assert!(before["errors"]
        .as_object()
        .unwrap()
        .contains_key("rate_limited"));

    let mut ann = server.connect("ann").await;
    let mut bob = server.connect("bob").await;
    let mut cy = server.connect("cy").await;
    ann.join("busy").await;
    bob.join("busy").await;
    ann.expect("presence").await; // bob arrived
    cy.join("quiet").await;
    for i in 0..3 {
        ann.publish("busy", json!({ "n": i })).await;
        assert_eq!(bob.expect("message").await["body"]["n"], i);
    }
    let error = cy.request(json!({"type": "join"})).await;
    assert_eq!(error["type"], "error");
    let code = error["code"].as_str().expect("error code").to_owned();

    let after = stats(&server).await;
    assert_eq!(n(&after["connections"]), 3);
    assert_eq!(n(&after["users"]), 3);
    assert_eq!(n(&after["rooms"]), 2);
    // Data frames from clients: ann's join and 3 publishes, bob's join, cy's
    // join and the bad one.
    assert_eq!(n(&after["messages_in"]) - n(&before["messages_in"]), 7);
    // Each publish reached bob (the sender gets the ack instead).
    assert_eq!(n(&after["messages_out"]) - n(&before["messages_out"]), 3);
    assert_eq!(n(&after["fanout_seconds"]["count"]), 3);
    let buckets = after["fanout_seconds"]["buckets"].as_array().unwrap();
    assert_eq!(n(&buckets.last().unwrap()["count"]), 3, "{buckets:?}");
    assert!(after["fanout_seconds"]["sum"].as_f64().unwrap() > 0.0);
    assert_eq!(n(&after["errors"][&code]), 1, "{}", after["errors"]);
    let uptime = |stats: &Value| stats["uptime_seconds"].as_f64().expect("uptime_seconds");
    assert!(uptime(&after) > uptime(&before));
    assert_eq!(
        after["busiest_rooms"],
        json!([
            {"room": "busy", "online": 2, "seq": 3},
            {"room": "quiet", "online": 1, "seq": 0},
        ])
    );

    // The same numbers as /metrics (nothing moved in between).
    for (field, metric) in [
        ("messages_in", "switchboard_messages_in_total"),
        ("messages_out", "switchboard_messages_out_total"),
        ("connections", "switchboard_connections"),
        ("users", "switchboard_users"),
        ("rooms", "switchboard_rooms"),
    ] {
        assert_eq!(
            n(&after[field]) as f64,
            server.metric(metric).await,
            "{field} vs {metric}"
        );
    }
    assert_eq!(
        n(&after["errors"][&code]) as f64,
        server
            .metric(&format!("switchboard_errors_total{{code=\"{code}\"}}"))
            .await
    );

    // bob leaves. Others see the presence leave only once the hub's
    // registries and gauges have let him go.
    drop(bob);
    assert_eq!(ann.expect("presence").await["user"], "bob");
    let now = stats(&server).await;
    assert_eq!((n(&now["connections"]), n(&now["users"])), (2, 2));
    assert_eq!(
        now["busiest_rooms"],
        json!([
            {"room": "busy", "online": 1, "seq": 3},
            {"room": "quiet", "online": 1, "seq": 0},
        ])
    );
}
