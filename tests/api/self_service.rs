//! Self-service views for creators: earnings by agent.

use serde_json::{json, Value};

use crate::charges::{charge, market};
use crate::helpers::{assert_error, TestApp};

crate::both!(earnings_by_agent_split_messages_and_money);

async fn earnings_by_agent_split_messages_and_money(app: TestApp) {
    let start = chrono::Utc::now() - chrono::Duration::seconds(1);
    let (org, helper) = market(&app, "0.3", "10", 1, "public").await;
    let creator = app.token("creator");
    let (s, other) = app
        .post(
            &format!("/v1/orgs/{org}/agents"),
            &creator,
            json!({"name": "Other", "model": "model-a", "visibility": "public", "publisher_addon": "5"}),
        )
        .await;
    assert_eq!(s, 201, "{other}");
    let other = other["id"].as_str().unwrap().to_string();
    let alice = app.token("alice");
    let wallet = app.wallet_of("alice").await;
    app.fund(&wallet, "100").await;
    for (i, agent) in [&helper, &helper, &helper, &other, &other].into_iter().enumerate() {
        let (s, _, c) = charge(&app, &alice, agent, json!({}), &format!("m-{i}")).await;
        assert_eq!(s, 201, "{c}");
    }
    let path = format!("/v1/orgs/{org}/earnings/by-agent");
    let (s, view) = app.get(&path, &creator).await;
    assert_eq!(s, 200, "{view}");
    let of = |v: &Value, id: &str| -> Value {
        let row = v["data"].as_array().unwrap().iter().find(|r| r["agent_id"] == id).cloned();
        row.unwrap_or(Value::Null)
    };
    assert_eq!(view["data"].as_array().unwrap().len(), 2);
    assert_eq!(
        of(&view, &helper),
        json!({"agent_id": helper, "paid_messages": 2, "free_messages": 1,
               "gross_addon": "20", "platform_share": "6", "creator_earnings": "14"})
    );
    assert_eq!(
        of(&view, &other),
        json!({"agent_id": other, "paid_messages": 2, "free_messages": 0,
               "gross_addon": "10", "platform_share": "3", "creator_earnings": "7"})
    );
    // A period before the charges holds none; one around them holds all.
    let before = start.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let (s, empty) = app.get(&format!("{path}?to={}", before.replace('+', "%2B")), &creator).await;
    assert_eq!((s.as_u16(), empty["data"].as_array().map(Vec::len)), (200, Some(0)), "{empty}");
    let (_, all) = app.get(&format!("{path}?from={}", before.replace('+', "%2B")), &creator).await;
    assert_eq!(all["data"], view["data"]);
    // Refusals.
    let (s, b) =
        app.get(&format!("{path}?from=2026-02-01T00:00:00Z&to=2026-01-01T00:00:00Z"), &creator).await;
    assert_error(s, &b, 422, "validation_error");
    let (s, b) = app.get(&format!("{path}?from=yesterday"), &creator).await;
    assert_error(s, &b, 422, "validation_error");
    let (s, b) = app.get(&path, &alice).await;
    assert_error(s, &b, 404, "not_found");
    let (s, m) = app.post(&format!("/v1/orgs/{org}/members"), &creator, json!({"user_id": "mia"})).await;
    assert_eq!(s, 201, "{m}");
    let (s, b) = app.get(&path, &app.token("mia")).await;
    assert_error(s, &b, 403, "forbidden");
}
