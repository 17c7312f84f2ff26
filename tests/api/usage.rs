//! Wallet usage reports: messages, metered usage and credits spent (net of
//! operator refunds) per day, model, agent and member, from one grouped
//! query on each backend.

use chrono::{Duration, Utc};
use reqwest::Method;
use serde_json::{json, Value};

use crate::charges::charge;
use crate::helpers::{assert_error, TestApp};
use crate::metered::{metered_market, usage};

crate::both!(usage_is_grouped_exactly_by_day_model_agent_and_member, usage_periods_and_access_are_checked);

/// A second model with a flat price (0.2 infra) and an agent on it with a
/// 1-credit add-on, in the creator's organization.
async fn flat_agent(app: &TestApp, creator_org: &str) -> String {
    let (s, _, m) = app
        .send(
            Method::PUT,
            "/v1/admin/models/model-b",
            Some(&app.operator_token()),
            Some(json!({"runtime_infra": "0.2", "provider_cost": "0"})),
            None,
        )
        .await;
    assert_eq!(s, 200, "{m}");
    let (s, a) = app
        .post(
            &format!("/v1/orgs/{creator_org}/agents"),
            &app.token("creator"),
            json!({"name": "Flat", "model": "model-b", "visibility": "public", "publisher_addon": "1"}),
        )
        .await;
    assert_eq!(s, 201, "{a}");
    a["id"].as_str().unwrap().to_string()
}

/// The buyers' organization (owner boss, member mia) and its funded wallet.
async fn buyers(app: &TestApp) -> (String, String) {
    let boss = app.token("boss");
    let (s, org) = app.post("/v1/orgs", &boss, json!({"name": "Buyers"})).await;
    assert_eq!(s, 201, "{org}");
    let org_id = org["id"].as_str().unwrap().to_string();
    let (s, m) = app.post(&format!("/v1/orgs/{org_id}/members"), &boss, json!({"user_id": "mia"})).await;
    assert_eq!(s, 201, "{m}");
    let wallet = org["wallet_id"].as_str().unwrap().to_string();
    app.fund(&wallet, "100").await;
    (org_id, wallet)
}

async fn paid(app: &TestApp, who: &str, agent: &str, body: Value, key: &str) -> Value {
    let (s, _, c) = charge(app, &app.token(who), agent, body, key).await;
    assert_eq!(s, 201, "{c}");
    c
}

fn line(
    key: &str,
    messages: (i64, i64),
    tokens: (i64, i64),
    gens: i64,
    tools: i64,
    credits: [&str; 3],
) -> Value {
    json!({"key": key, "paid_messages": messages.0, "free_messages": messages.1,
           "input_tokens": tokens.0, "output_tokens": tokens.1, "generations": gens, "tool_calls": tools,
           "credits_charged": credits[0], "credits_refunded": credits[1], "credits_spent": credits[2]})
}

fn sorted(v: &Value) -> Vec<Value> {
    let mut data = v["data"].as_array().expect("data").clone();
    data.sort_by(|a, b| a["key"].as_str().cmp(&b["key"].as_str()));
    data
}

async fn usage_is_grouped_exactly_by_day_model_agent_and_member(app: TestApp) {
    let (creator_org, metered) = metered_market(&app, "0.05", 1).await;
    let flat = flat_agent(&app, &creator_org).await;
    let (org, wallet) = buyers(&app).await;
    let via_org = |extra: Value| {
        let mut b = json!({"org_id": org});
        if let Value::Object(m) = extra {
            b.as_object_mut().unwrap().extend(m);
        }
        b
    };
    // boss: a free metered message (its metered parts are paid), then a paid one.
    let c1 = paid(&app, "boss", &metered, via_org(json!({"usage": usage()})), "u1").await;
    assert_eq!((c1["free"].as_bool(), c1["total"].as_str()), (Some(true), Some("0.060527")));
    let c2 = paid(&app, "boss", &metered, via_org(json!({"usage": usage()})), "u2").await;
    assert_eq!((c2["free"].as_bool(), c2["total"].as_str()), (Some(false), Some("0.120527")));
    // mia: a free metered message of a million input tokens, two flat ones.
    let c3 = paid(&app, "mia", &metered, via_org(json!({"usage": {"input_tokens": 1_000_000}})), "u3").await;
    assert_eq!((c3["free"].as_bool(), c3["total"].as_str()), (Some(true), Some("0.15")));
    let c4 = paid(&app, "mia", &flat, via_org(json!({})), "u4").await;
    let c5 = paid(&app, "mia", &flat, via_org(json!({})), "u5").await;
    assert_eq!((c4["total"].as_str(), c5["total"].as_str()), (Some("1.2"), Some("1.2")));
    // An operator refunds 0.5 of the last one.
    let (s, _, r) = app
        .send(
            Method::POST,
            &format!("/v1/admin/charges/{}/refund", c5["id"].as_str().unwrap()),
            Some(&app.operator_token()),
            Some(json!({"amount": "0.5", "reason": "wrong answer"})),
            Some("r1"),
        )
        .await;
    assert_eq!(s, 201, "{r}");
    // boss pays one flat message from his own wallet: not the org's usage.
    let own = app.wallet_of("boss").await;
    app.fund(&own, "10").await;
    paid(&app, "boss", &flat, json!({}), "u6").await;
    // The first message was sent half a second before today began (UTC).
    let today = Utc::now().date_naive();
    let midnight = today.and_hms_opt(0, 0, 0).unwrap();
    {
        use diesel::prelude::*;
        use tally::db::schema::charges;
        let conn: &mut tally::db::DbConn = &mut app.conn();
        diesel::update(charges::table.find(c1["id"].as_str().unwrap()))
            .set(charges::created_at.eq(midnight - Duration::milliseconds(500)))
            .execute(conn)
            .unwrap();
    }
    let yesterday = (today - Duration::days(1)).format("%Y-%m-%d").to_string();
    let today = today.format("%Y-%m-%d").to_string();
    let from = (Utc::now() - Duration::days(2)).format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let to = (Utc::now() + Duration::hours(1)).format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let boss = app.token("boss");
    let report = |group: &str| format!("/v1/wallets/{wallet}/usage?from={from}&to={to}&group_by={group}");

    let (s, days) = app.get(&report("day"), &boss).await;
    assert_eq!(s, 200, "{days}");
    assert_eq!((days["wallet_id"].as_str(), days["group_by"].as_str()), (Some(wallet.as_str()), Some("day")));
    assert_eq!(
        days["data"],
        json!([
            line(&yesterday, (0, 1), (1234, 567), 1, 2, ["0.060527", "0", "0.060527"]),
            line(&today, (3, 1), (1_001_234, 567), 1, 2, ["2.670527", "0.5", "2.170527"]),
        ])
    );
    let (s, models) = app.get(&report("model"), &boss).await;
    assert_eq!(s, 200, "{models}");
    assert_eq!(
        models["data"],
        json!([
            line("model-a", (1, 2), (1_002_468, 1134), 2, 4, ["0.331054", "0", "0.331054"]),
            line("model-b", (2, 0), (0, 0), 0, 0, ["2.4", "0.5", "1.9"]),
        ])
    );
    let (s, agents) = app.get(&report("agent"), &boss).await;
    assert_eq!(s, 200, "{agents}");
    let mut expected = vec![
        line(&metered, (1, 2), (1_002_468, 1134), 2, 4, ["0.331054", "0", "0.331054"]),
        line(&flat, (2, 0), (0, 0), 0, 0, ["2.4", "0.5", "1.9"]),
    ];
    expected.sort_by(|a, b| a["key"].as_str().cmp(&b["key"].as_str()));
    assert_eq!(agents["data"], json!(expected));
    let (s, members) = app.get(&report("member"), &boss).await;
    assert_eq!(s, 200, "{members}");
    assert_eq!(
        sorted(&members),
        vec![
            line("boss", (1, 1), (2468, 1134), 2, 4, ["0.181054", "0", "0.181054"]),
            line("mia", (2, 1), (1_000_000, 0), 0, 0, ["2.55", "0.5", "2.05"]),
        ]
    );
    // A plain member reads the wallet's usage, not per member.
    let (s, by_day) = app.get(&report("day"), &app.token("mia")).await;
    assert_eq!((s.as_u16(), &by_day["data"]), (200, &days["data"]));
    let (s, b) = app.get(&report("member"), &app.token("mia")).await;
    assert_error(s, &b, 403, "forbidden");
    // The period bounds the charges: from today on, yesterday's is out.
    let (s, since) = app
        .get(&format!("/v1/wallets/{wallet}/usage?from={today}T00:00:00Z&to={to}&group_by=member"), &boss)
        .await;
    assert_eq!(s, 200, "{since}");
    assert_eq!(
        sorted(&since),
        vec![
            line("boss", (1, 0), (1234, 567), 1, 2, ["0.120527", "0", "0.120527"]),
            line("mia", (2, 1), (1_000_000, 0), 0, 0, ["2.55", "0.5", "2.05"]),
        ]
    );
    // The person's own wallet holds only the message paid from it; the
    // default period (30 days to now) and grouping (day) apply.
    let (s, mine) = app.get(&format!("/v1/wallets/{own}/usage"), &boss).await;
    assert_eq!(s, 200, "{mine}");
    assert_eq!(mine["group_by"], "day");
    assert_eq!(mine["data"], json!([line(&today, (1, 0), (0, 0), 0, 0, ["1.2", "0", "1.2"])]));
    let span = chrono::DateTime::parse_from_rfc3339(mine["to"].as_str().unwrap()).unwrap()
        - chrono::DateTime::parse_from_rfc3339(mine["from"].as_str().unwrap()).unwrap();
    assert_eq!(span, Duration::days(30));
}

async fn usage_periods_and_access_are_checked(app: TestApp) {
    let alice = app.token("alice");
    let wallet = app.wallet_of("alice").await;
    let path = format!("/v1/wallets/{wallet}/usage");
    let (s, empty) = app.get(&path, &alice).await;
    assert_eq!((s.as_u16(), empty["data"].clone()), (200, json!([])), "{empty}");
    for bad in [
        "from=2026-02-01T00:00:00Z&to=2026-01-01T00:00:00Z",
        "from=2026-01-01T00:00:00Z&to=2026-01-01T00:00:00Z",
        "from=2025-01-01T00:00:00Z&to=2026-01-02T00:00:01Z",
        "from=yesterday",
        "group_by=week",
        "group_by=member",
        "limit=3",
    ] {
        let (s, b) = app.get(&format!("{path}?{bad}"), &alice).await;
        assert_error(s, &b, 422, "validation_error");
    }
    // 366 days exactly is allowed.
    let (s, b) = app.get(&format!("{path}?from=2025-01-01T00:00:00Z&to=2026-01-02T00:00:00Z"), &alice).await;
    assert_eq!(s, 200, "{b}");
    let (s, b) = app.get(&path, &app.token("bob")).await;
    assert_error(s, &b, 404, "not_found");
    let (s, _, b) = app.send(Method::GET, &path, None, None, None).await;
    assert_error(s, &b, 401, "unauthorized");
}
