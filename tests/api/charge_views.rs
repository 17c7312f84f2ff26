//! Reading charges: `GET /v1/charges/{id}` as the charge was stored (who
//! may see it, exact amounts, the prices and usage it used), and the usage
//! and hold of a charge in the wallet's history and its CSV export.

use reqwest::Method;
use serde_json::{json, Value};

use crate::both;
use crate::charges::{charge, market};
use crate::helpers::{assert_error, TestApp};
use crate::metered::{metered_market, usage};

both!(
    a_charge_is_shown_to_its_payer_org_admins_and_operators,
    a_metered_charge_shows_the_prices_it_used,
    history_and_csv_carry_the_usage_and_the_hold,
);

async fn get_charge(app: &TestApp, id: &str, token: &str) -> (reqwest::StatusCode, Value) {
    app.get(&format!("/v1/charges/{id}"), token).await
}

async fn a_charge_is_shown_to_its_payer_org_admins_and_operators(app: TestApp) {
    let (_, agent) = market(&app, "0.3", "1", 0, "public").await;
    let owner = app.token("olivia");
    let (s, org) = app.post("/v1/orgs", &owner, json!({"name": "Buyer Co"})).await;
    assert_eq!(s, 201, "{org}");
    let org_id = org["id"].as_str().unwrap().to_string();
    let org_wallet = org["wallet_id"].as_str().unwrap().to_string();
    app.fund(&org_wallet, "10").await;
    for member in ["mia", "max"] {
        let (s, b) =
            app.post(&format!("/v1/orgs/{org_id}/members"), &owner, json!({"user_id": member})).await;
        assert_eq!(s, 201, "{b}");
    }
    let mia = app.token("mia");
    let (s, _, c) = charge(&app, &mia, &agent, json!({"org_id": org_id}), "m-1").await;
    assert_eq!(s, 201, "{c}");
    let id = c["id"].as_str().unwrap().to_string();

    // The payer sees the charge exactly as the charge answered it.
    let (s, got) = get_charge(&app, &id, &mia).await;
    assert_eq!(s, 200, "{got}");
    assert_eq!(got, c);
    let expected = json!({
        "id": id,
        "agent_id": agent,
        "model": "model-a",
        "user_id": "mia",
        "org_id": org_id,
        "free": false,
        "runtime_infra": "0.3",
        "publisher_addon": "1",
        "total": "1.3",
        "wallet_id": org_wallet,
        "balance_after": "8.7",
        "free_messages_left": 0,
        "transaction_id": c["transaction_id"],
        "created_at": c["created_at"],
        "usage": null,
        "price": {
            "runtime_infra": "0.3", "input_tokens": "0", "output_tokens": "0", "tools": "0",
            "generations": "0", "platform_share": "0.3", "creator_earnings": "0.7", "total": "1.3",
            "subsidy": "0", "addon_forgone": "0"
        },
        "input_per_mtok": null,
        "output_per_mtok": null,
        "per_generation": null,
        "tool_prices": {},
        "held": "0",
        "uncollected": "0",
        "hold_id": null,
        "refunded": "0",
        "metadata": {},
    });
    assert_eq!(got, expected);
    let (_, history) = app.get(&format!("/v1/wallets/{org_wallet}/transactions"), &owner).await;
    assert_eq!(history["data"][0]["id"], c["transaction_id"], "{history}");

    // The paying organization's owner, an operator and a service token see it too.
    for token in [owner.clone(), app.operator_token(), app.token_with("chat-backend", &["service"])] {
        let (s, got) = get_charge(&app, &id, &token).await;
        assert_eq!((s.as_u16(), &got), (200, &expected));
    }
    // A plain member who did not pay, the agent's creator and a stranger do not.
    for who in ["max", "creator", "stranger"] {
        let (s, b) = get_charge(&app, &id, &app.token(who)).await;
        assert_error(s, &b, 404, "not_found");
    }
    let (s, b) = get_charge(&app, "chg_unknown", &app.operator_token()).await;
    assert_error(s, &b, 404, "not_found");
    let (s, _, b) = app.send(Method::GET, &format!("/v1/charges/{id}"), None, None, None).await;
    assert_error(s, &b, 401, "unauthorized");

    // A personal charge is the person's own: the org's owner does not see it.
    let alice = app.token("alice");
    let wallet = app.wallet_of("alice").await;
    app.fund(&wallet, "2").await;
    let (s, _, own) = charge(&app, &alice, &agent, json!({}), "a-1").await;
    assert_eq!(s, 201, "{own}");
    let own_id = own["id"].as_str().unwrap();
    let (s, got) = get_charge(&app, own_id, &alice).await;
    assert_eq!((s.as_u16(), &got), (200, &own));
    assert_eq!(
        (got["org_id"].clone(), got["wallet_id"].as_str(), got["balance_after"].as_str()),
        (Value::Null, Some(wallet.as_str()), Some("0.7"))
    );
    let (s, b) = get_charge(&app, own_id, &owner).await;
    assert_error(s, &b, 404, "not_found");
    // Reading moves nothing.
    assert_eq!(app.balance(&org_wallet, &owner).await, "8.7");
    assert_eq!(app.balance(&wallet, &alice).await, "0.7");
    app.assert_ledger_ok();
}

async fn a_metered_charge_shows_the_prices_it_used(app: TestApp) {
    let (_, agent) = metered_market(&app, "0.05", 0).await;
    let alice = app.token("alice");
    let wallet = app.wallet_of("alice").await;
    app.fund(&wallet, "1").await;
    let (s, _, c) = charge(&app, &alice, &agent, json!({ "usage": usage() }), "w1").await;
    assert_eq!(s, 201, "{c}");
    let id = c["id"].as_str().unwrap();

    // New prices apply to new charges only: the charge keeps its own.
    let op = app.operator_token();
    let (s, _, m) = app
        .send(
            Method::PUT,
            "/v1/admin/models/model-a",
            Some(&op),
            Some(json!({"runtime_infra": "0.02", "provider_cost": "0.002", "input_per_mtok": "1",
                        "output_per_mtok": "2", "per_generation": "0.5"})),
            None,
        )
        .await;
    assert_eq!(s, 200, "{m}");
    let (s, _, t) = app
        .send(Method::PUT, "/v1/admin/tools/web_search", Some(&op), Some(json!({"price": "0.5"})), None)
        .await;
    assert_eq!(s, 200, "{t}");

    let (s, got) = get_charge(&app, id, &alice).await;
    assert_eq!(s, 200, "{got}");
    assert_eq!(got, c);
    let expected = json!({
        "id": id,
        "agent_id": agent,
        "model": "model-a",
        "user_id": "alice",
        "org_id": null,
        "free": false,
        "runtime_infra": "0.01",
        "publisher_addon": "0.05",
        "total": "0.120527",
        "wallet_id": wallet,
        "balance_after": "0.879473",
        "free_messages_left": 0,
        "transaction_id": c["transaction_id"],
        "created_at": c["created_at"],
        "usage": usage(),
        "price": {
            "runtime_infra": "0.01", "input_tokens": "0.000186", "output_tokens": "0.000341",
            "tools": "0.02", "generations": "0.04", "platform_share": "0.015",
            "creator_earnings": "0.035", "total": "0.120527", "subsidy": "0", "addon_forgone": "0"
        },
        "input_per_mtok": "0.15",
        "output_per_mtok": "0.6",
        "per_generation": "0.04",
        "tool_prices": {"web_search": "0.01"},
        "held": "0",
        "uncollected": "0",
        "hold_id": null,
        "refunded": "0",
        "metadata": {},
    });
    assert_eq!(got, expected);
    app.assert_ledger_ok();
}

/// The CSV export of a wallet, as the client reads it.
async fn export(app: &TestApp, wallet: &str, token: &str) -> String {
    let res = app
        .client
        .get(format!("{}/v1/wallets/{wallet}/transactions/export", app.address))
        .bearer_auth(token)
        .send()
        .await
        .expect("sent");
    assert_eq!(res.status(), 200);
    res.text().await.expect("whole body")
}

fn csv_time(t: &Value) -> String {
    chrono::DateTime::parse_from_rfc3339(t["created_at"].as_str().unwrap())
        .unwrap()
        .with_timezone(&chrono::Utc)
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

async fn history_and_csv_carry_the_usage_and_the_hold(app: TestApp) {
    let (org, agent) = metered_market(&app, "0.05", 0).await;
    let alice = app.token("alice");
    let wallet = app.wallet_of("alice").await;
    app.fund(&wallet, "1").await;
    // A hold reserved and released, then a metered and a flat charge.
    let (s, _, hold) = app
        .send(
            Method::POST,
            &format!("/v1/agents/{agent}/holds"),
            Some(&alice),
            Some(json!({"estimate": {"amount": "0.5"}})),
            Some("h-1"),
        )
        .await;
    assert_eq!(s, 201, "{hold}");
    let hold_id = hold["id"].as_str().unwrap().to_string();
    let (s, _, b) = app
        .send(Method::POST, &format!("/v1/holds/{hold_id}/release"), Some(&alice), None, Some("r-1"))
        .await;
    assert_eq!(s, 200, "{b}");
    let (s, _, metered) = charge(&app, &alice, &agent, json!({ "usage": usage() }), "w1").await;
    assert_eq!(s, 201, "{metered}");
    let (s, _, flat) = charge(&app, &alice, &agent, json!({}), "w2").await;
    assert_eq!(s, 201, "{flat}");
    let metered_id = metered["id"].as_str().unwrap();
    let flat_id = flat["id"].as_str().unwrap();

    let (s, page) = app.get(&format!("/v1/wallets/{wallet}/transactions"), &alice).await;
    assert_eq!(s, 200, "{page}");
    let t = page["data"].as_array().unwrap();
    let rows: Vec<(&str, &str, &str)> = t
        .iter()
        .map(|r| {
            (r["type"].as_str().unwrap(), r["amount"].as_str().unwrap(), r["balance_after"].as_str().unwrap())
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("charge", "-0.06", "0.819473"),
            ("charge", "-0.120527", "0.879473"),
            ("hold_release", "0.5", "1"),
            ("hold", "-0.5", "0.5"),
            ("adjustment", "1", "1"),
        ]
    );
    assert_eq!(
        t[0]["references"],
        json!({"actor": "alice", "agent_id": agent, "model": "model-a", "charge_id": flat_id,
               "runtime_infra": "0.01", "publisher_addon": "0.05"})
    );
    assert_eq!(
        t[1]["references"],
        json!({"actor": "alice", "agent_id": agent, "model": "model-a", "charge_id": metered_id,
               "runtime_infra": "0.01", "publisher_addon": "0.05", "input_tokens": 1234,
               "output_tokens": 567, "tool_calls": {"web_search": 2}, "generations": 1})
    );
    assert_eq!(t[2]["references"]["hold_id"], hold_id.as_str());
    assert_eq!(t[3]["references"]["hold_id"], hold_id.as_str());

    // The creator's earnings history shares the code: the same usage.
    let (s, earnings) =
        app.get(&format!("/v1/orgs/{org}/earnings/transactions"), &app.token("creator")).await;
    assert_eq!(s, 200, "{earnings}");
    let e = &earnings["data"][1]["references"];
    assert_eq!(
        (e["charge_id"].as_str(), e["input_tokens"].as_u64()),
        (Some(metered_id), Some(1234)),
        "{earnings}"
    );
    assert_eq!(e["tool_calls"], json!({"web_search": 2}));

    let csv = export(&app, &wallet, &alice).await;
    let line = |i: usize, tail: &str| {
        format!(
            "{},{},{},{},{},{},{tail}",
            t[i]["id"].as_str().unwrap(),
            t[i]["type"].as_str().unwrap(),
            t[i]["amount"].as_str().unwrap(),
            t[i]["balance_after"].as_str().unwrap(),
            csv_time(&t[i]),
            t[i]["entry_id"].as_str().unwrap(),
        )
    };
    let expected = [
        "id,type,amount,balance_after,created_at,entry_id,reverses_entry_id,actor,reason,agent_id,model,\
         charge_id,top_up_id,pack_id,payout_id,input_tokens,output_tokens,tool_calls,generations,hold_id"
            .to_string(),
        line(0, &format!(",alice,,{agent},model-a,{flat_id},,,,,,,,")),
        line(1, &format!(",alice,,{agent},model-a,{metered_id},,,,1234,567,\"{{\"\"web_search\"\":2}}\",1,")),
        line(2, &format!(",alice,released,{agent},,,,,,,,,,{hold_id}")),
        line(3, &format!(",alice,,{agent},,,,,,,,,,{hold_id}")),
        line(4, ",operator-1,test,,,,,,,,,,,"),
    ];
    assert_eq!(csv.lines().collect::<Vec<_>>(), expected);
    app.assert_ledger_ok();
}
