//! Outbound events (the transactional outbox): what is recorded with which
//! change, what a refused or rolled-back change records (nothing but
//! `wallet.depleted`), the low-balance alert's crossings, and who sees what.

use serde_json::{json, Value};
use tally::services::events::{self, EventType, Subject};
use tally::services::ServiceError;

use crate::both;
use crate::charges::{charge, market};
use crate::helpers::{assert_error, TestApp};

both!(
    a_refused_charge_emits_only_wallet_depleted,
    a_rolled_back_change_emits_nothing,
    low_balance_fires_once_per_crossing,
    events_are_listed_to_whom_they_concern,
);

/// Every event row: (type, subject type, subject id, wallet id).
pub fn all_events(app: &TestApp) -> Vec<(String, String, String, Option<String>)> {
    use diesel::prelude::*;
    use tally::db::schema::events as e;
    let conn: &mut tally::db::DbConn = &mut app.conn();
    e::table
        .order((e::created_at.asc(), e::id.asc()))
        .select((e::event_type, e::subject_type, e::subject_id, e::wallet_id))
        .load(conn)
        .unwrap()
}

/// The events of one type that `GET /v1/events` lists to the token's
/// holder, oldest first (at most 100: the tests' pages).
pub async fn listed(app: &TestApp, token: &str, event_type: &str) -> Vec<Value> {
    let (s, page) = app.get(&format!("/v1/events?type={event_type}&limit=100"), token).await;
    assert_eq!(s, 200, "{page}");
    assert_eq!(page["has_more"], false, "{page}");
    let mut data = page["data"].as_array().unwrap().clone();
    data.reverse();
    data
}

/// The one event of a type listed to the token's holder (fails when there
/// is none or more than one).
pub async fn only(app: &TestApp, token: &str, event_type: &str) -> Value {
    let all = listed(app, token, event_type).await;
    assert_eq!(all.len(), 1, "exactly one {event_type}: {all:?}");
    all.into_iter().next().unwrap()
}

fn types(app: &TestApp) -> Vec<String> {
    all_events(app).into_iter().map(|(t, ..)| t).collect()
}

async fn a_refused_charge_emits_only_wallet_depleted(app: TestApp) {
    let (_, agent) = market(&app, "0.3", "1.0", 0, "public").await;
    let ann = app.token("ann");
    let wallet = app.wallet_of("ann").await;
    app.fund(&wallet, "1").await;
    let (s, _, b) = charge(&app, &ann, &agent, json!({}), "c1").await;
    assert_error(s, &b, 402, "insufficient_funds");
    // The charge rolled back; the 402 alone is announced.
    assert_eq!(
        all_events(&app),
        vec![("wallet.depleted".to_string(), "person".to_string(), "ann".to_string(), Some(wallet.clone()))]
    );
    assert_eq!(app.count("charges"), 0);
    // At most once an hour per wallet.
    let (s, _, b) = charge(&app, &ann, &agent, json!({}), "c2").await;
    assert_error(s, &b, 402, "insufficient_funds");
    assert_eq!(types(&app), vec!["wallet.depleted"]);
    // As listed: the wallet as the API shows it.
    let (s, page) = app.get("/v1/events", &ann).await;
    assert_eq!(s, 200, "{page}");
    let e = &page["data"][0];
    assert_eq!((e["type"].as_str(), page["has_more"].as_bool()), (Some("wallet.depleted"), Some(false)));
    assert!(e["id"].as_str().unwrap().starts_with("evt_"), "{e}");
    assert_eq!(e["subject"], json!({"type": "person", "id": "ann", "wallet_id": wallet}));
    assert_eq!((e["data"]["id"].as_str(), e["data"]["balance"].as_str()), (Some(wallet.as_str()), Some("1")));
    // A successful charge of a funded wallet announces nothing.
    app.fund(&wallet, "9").await;
    let (s, _, c) = charge(&app, &ann, &agent, json!({}), "c3").await;
    assert_eq!(s, 201, "{c}");
    assert_eq!(types(&app), vec!["wallet.depleted"]);
}

async fn a_rolled_back_change_emits_nothing(app: TestApp) {
    let result = tally::db::write_tx(&mut app.conn(), |tx| -> Result<(), ServiceError> {
        events::record(tx, EventType::WalletFrozen, &Subject::person("ann"), &json!({"id": "x"}))?;
        Err(ServiceError::Validation("changed my mind".into()))
    });
    assert!(result.is_err());
    assert_eq!((app.count("events"), app.count("webhook_deliveries")), (0, 0));
    tally::db::write_tx(&mut app.conn(), |tx| -> Result<(), ServiceError> {
        events::record(tx, EventType::WalletFrozen, &Subject::person("ann"), &json!({"id": "x"}))?;
        Ok(())
    })
    .unwrap();
    assert_eq!(app.count("events"), 1);
}

async fn low_balance_fires_once_per_crossing(app: TestApp) {
    let (_, agent) = market(&app, "0.3", "1.0", 0, "public").await;
    let ann = app.token("ann");
    let wallet = app.wallet_of("ann").await;
    app.fund(&wallet, "10").await;
    // Bob has no threshold: his charges never alert.
    let bob = app.token("bob");
    let bob_wallet = app.wallet_of("bob").await;
    app.fund(&bob_wallet, "3").await;
    let (s, w) =
        app.patch(&format!("/v1/wallets/{wallet}"), &ann, json!({"low_balance_threshold": "5"})).await;
    assert_eq!((s.as_u16(), w["low_balance_threshold"].as_str()), (200, Some("5")), "{w}");
    let (s, b) =
        app.patch(&format!("/v1/wallets/{wallet}"), &ann, json!({"low_balance_threshold": "-1"})).await;
    assert_error(s, &b, 422, "validation_error");
    assert!(types(&app).is_empty(), "setting a threshold announces nothing");
    // 10 -> 8.7 -> 7.4 -> 6.1 -> 4.8 (crossed) -> 3.5 (still below).
    for i in 0..5 {
        let (s, _, c) = charge(&app, &ann, &agent, json!({}), &format!("a{i}")).await;
        assert_eq!(s, 201, "{c}");
        let (s, _, c) = charge(&app, &bob, &agent, json!({}), &format!("b{i}")).await;
        assert!(s == 201 || s == 402, "{c}");
        let expected = if i < 3 { 0 } else { 1 };
        let lows = types(&app).iter().filter(|t| *t == "wallet.low_balance").count();
        assert_eq!(lows, expected, "after charge {i}");
    }
    let (_, page) = app.get("/v1/events?type=wallet.low_balance", &ann).await;
    let data = &page["data"][0]["data"];
    assert_eq!(
        data,
        &json!({"wallet_id": wallet, "owner_type": "person", "owner_id": "ann",
                "available": "4.8", "low_balance_threshold": "5"})
    );
    // Back above (3.5 + 2 = 5.5) re-arms it; the next crossing alerts again.
    app.fund(&wallet, "2").await;
    let (s, _, c) = charge(&app, &ann, &agent, json!({}), "a5").await;
    assert_eq!((s.as_u16(), c["balance_after"].as_str()), (201, Some("4.2")), "{c}");
    let lows: Vec<_> = all_events(&app).into_iter().filter(|(t, ..)| t == "wallet.low_balance").collect();
    assert_eq!(lows.len(), 2);
    assert!(lows.iter().all(|(_, _, who, w)| who == "ann" && w.as_deref() == Some(wallet.as_str())));
    // Removing the threshold stops the alerts.
    let (s, w) =
        app.patch(&format!("/v1/wallets/{wallet}"), &ann, json!({"low_balance_threshold": null})).await;
    assert_eq!((s.as_u16(), &w["low_balance_threshold"]), (200, &Value::Null), "{w}");
    app.fund(&wallet, "10").await;
    for i in 0..8 {
        let (s, _, c) = charge(&app, &ann, &agent, json!({}), &format!("z{i}")).await;
        assert_eq!(s, 201, "{c}");
    }
    assert_eq!(types(&app).iter().filter(|t| *t == "wallet.low_balance").count(), 2);
    app.assert_ledger_ok();
}

async fn events_are_listed_to_whom_they_concern(app: TestApp) {
    let op = app.operator_token();
    let ann = app.token("ann");
    let wallet = app.wallet_of("ann").await;
    let (s, org) = app.post("/v1/orgs", &ann, json!({"name": "Ann Co"})).await;
    assert_eq!(s, 201, "{org}");
    let org_id = org["id"].as_str().unwrap().to_string();
    let org_wallet = org["wallet_id"].as_str().unwrap().to_string();
    let (s, _) = app.post(&format!("/v1/orgs/{org_id}/members"), &ann, json!({"user_id": "mo"})).await;
    assert_eq!(s, 201);
    for w in [&wallet, &org_wallet] {
        let (s, b) =
            app.post(&format!("/v1/admin/wallets/{w}/freeze"), &op, json!({"reason": "check"})).await;
        assert_eq!(s, 200, "{b}");
        let (s, b) = app.post(&format!("/v1/admin/wallets/{w}/unfreeze"), &op, json!({"reason": "ok"})).await;
        assert_eq!(s, 200, "{b}");
    }
    // Unfreezing a wallet that is not frozen announces nothing.
    let (s, _) = app.post(&format!("/v1/admin/wallets/{wallet}/unfreeze"), &op, json!({"reason": "x"})).await;
    assert_eq!(s, 200);
    assert_eq!(types(&app), vec!["wallet.frozen", "wallet.unfrozen", "wallet.frozen", "wallet.unfrozen"]);
    let ids = |page: &Value| -> Vec<(String, String)> {
        page["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (e["type"].as_str().unwrap().to_string(), e["subject"]["id"].as_str().unwrap().to_string())
            })
            .collect()
    };
    // Ann: her own and her organization's (she owns it), newest first.
    let (s, page) = app.get("/v1/events", &ann).await;
    assert_eq!(s, 200, "{page}");
    assert_eq!(
        ids(&page),
        vec![
            ("wallet.unfrozen".into(), org_id.clone()),
            ("wallet.frozen".into(), org_id.clone()),
            ("wallet.unfrozen".into(), "ann".into()),
            ("wallet.frozen".into(), "ann".into()),
        ]
    );
    // A plain member sees neither; another person nothing; the operator all.
    let (_, page) = app.get("/v1/events", &app.token("mo")).await;
    assert_eq!(ids(&page), vec![]);
    let (_, page) = app.get("/v1/events", &op).await;
    assert_eq!(page["data"].as_array().unwrap().len(), 4);
    // Keyset pages and the type filter.
    let (_, first) = app.get("/v1/events?limit=3", &ann).await;
    assert_eq!((first["data"].as_array().unwrap().len(), first["has_more"].as_bool()), (3, Some(true)));
    let last = first["data"][2]["id"].as_str().unwrap();
    let (_, next) = app.get(&format!("/v1/events?limit=3&starting_after={last}"), &ann).await;
    assert_eq!(ids(&next), vec![("wallet.frozen".into(), "ann".into())]);
    assert_eq!(next["has_more"], false);
    let (_, frozen) = app.get("/v1/events?type=wallet.frozen", &ann).await;
    assert_eq!(frozen["data"].as_array().unwrap().len(), 2);
    let (s, b) = app.get("/v1/events?type=wallet.melted", &ann).await;
    assert_error(s, &b, 422, "validation_error");
    // Another person's event is no cursor for Bob.
    let (s, b) = app.get(&format!("/v1/events?starting_after={last}"), &app.token("bob")).await;
    assert_error(s, &b, 404, "not_found");
    let (s, b) = app.get("/v1/events?limit=0", &ann).await;
    assert_error(s, &b, 422, "validation_error");
}

/// Every event type is a named schema listed under the 3.1 document's
/// `webhooks`; the 3.0 variant, which has no `webhooks`, drops the key.
#[test]
fn event_payloads_are_documented_as_webhooks() {
    let doc: Value = serde_json::from_str(&tally::api::docs::openapi_json()).unwrap();
    let hooks = doc["webhooks"].as_object().expect("webhooks");
    assert_eq!(hooks.len(), EventType::ALL.len());
    let body = &hooks["top_up.paid"]["post"]["requestBody"]["content"]["application/json"]["schema"];
    assert_eq!(body["$ref"], "#/components/schemas/TopUpPaidEvent");
    let schema = &doc["components"]["schemas"]["TopUpPaidEvent"];
    assert_eq!(schema["properties"]["data"]["$ref"], "#/components/schemas/TopUp");
    assert_eq!(schema["properties"]["type"]["enum"], json!(["top_up.paid"]));
    let low = &doc["components"]["schemas"]["WalletLowBalanceEvent"]["properties"]["data"]["$ref"];
    assert_eq!(low, "#/components/schemas/LowBalance");
    let doc30: Value = serde_json::from_str(&tally::api::docs::openapi_30_json()).unwrap();
    assert!(doc30.get("webhooks").is_none());
    assert!(doc30["components"]["schemas"]["TopUpPaidEvent"].is_object());
}
