//! Metered messages: model token and generation rates, the tools' price
//! list, charges and quotes with a usage; exact amounts, every refusal.

use diesel::prelude::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tally::domain::{AccountKind, OwnerType};
use tally::ledger::{self, AccountRef, PlatformAccounts};

use crate::both;
use crate::charges::{charge, market, revenue};
use crate::helpers::{assert_error, TestApp};

both!(
    the_worked_example_charges_every_part_exactly,
    a_free_message_with_usage_pays_the_metered_parts,
    bad_usage_is_refused_and_changes_nothing,
    unmetered_models_refuse_usage_but_not_zero_usage,
    price_book_and_tool_prices_are_validated,
    quotes_with_usage_say_whether_the_charge_would_go_through,
);

/// The README's worked example ("Metered messages").
const USAGE: &str =
    r#"{"input_tokens": 1234, "output_tokens": 567, "tool_calls": {"web_search": 2}, "generations": 1}"#;

pub fn usage() -> Value {
    serde_json::from_str(USAGE).unwrap()
}

pub fn platform(app: &TestApp) -> PlatformAccounts {
    tally::db::write_tx(&mut app.conn(), PlatformAccounts::ensure).unwrap()
}

pub fn balance(app: &TestApp, account: AccountRef) -> String {
    ledger::balance_of(&mut app.conn(), account).unwrap().to_string()
}

pub fn pending(app: &TestApp, org: &str) -> String {
    let account = tally::db::write_tx(&mut app.conn(), |tx| {
        ledger::ensure_account(tx, OwnerType::Org, org, AccountKind::EarningsPending, None)
    })
    .unwrap();
    balance(app, account)
}

async fn put(app: &TestApp, path: &str, token: Option<&str>, body: Value) -> (StatusCode, Value) {
    let (s, _, b) = app.send(Method::PUT, path, token, Some(body), None).await;
    (s, b)
}

/// Prices `model-a` with every metered rate and `web_search` at 0.01 per
/// call; a public agent with add-on `addon` and `free` free messages.
pub async fn metered_market(app: &TestApp, addon: &str, free: i32) -> (String, String) {
    let (org, agent) = market(app, "0.01", addon, free, "public").await;
    let op = app.operator_token();
    let (s, m) = put(
        app,
        "/v1/admin/models/model-a",
        Some(&op),
        json!({"runtime_infra": "0.01", "provider_cost": "0.002", "input_per_mtok": "0.15",
               "output_per_mtok": "0.6", "per_generation": "0.04"}),
    )
    .await;
    assert_eq!(s, 200, "{m}");
    assert_eq!(
        (m["input_per_mtok"].as_str(), m["output_per_mtok"].as_str(), m["per_generation"].as_str()),
        (Some("0.15"), Some("0.6"), Some("0.04"))
    );
    let (s, t) = put(app, "/v1/admin/tools/web_search", Some(&op), json!({"price": "0.01"})).await;
    assert_eq!(s, 200, "{t}");
    assert_eq!((t["id"].as_str(), t["price"].as_str()), (Some("web_search"), Some("0.01")));
    (org, agent)
}

/// Charge parts in order: infra, tokens in, tokens out, tools, generations,
/// platform share, creator, total, subsidy, add-on forgone.
pub fn parts(c: &Value) -> Vec<&str> {
    let p = &c["price"];
    [
        "runtime_infra",
        "input_tokens",
        "output_tokens",
        "tools",
        "generations",
        "platform_share",
        "creator_earnings",
        "total",
        "subsidy",
        "addon_forgone",
    ]
    .iter()
    .map(|k| p[*k].as_str().unwrap_or("missing"))
    .collect()
}

#[derive(QueryableByName, Debug, PartialEq)]
struct UsageRow {
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::BigInt>)]
    input_tokens: Option<i64>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::BigInt>)]
    output_tokens: Option<i64>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::BigInt>)]
    generations: Option<i64>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    tool_calls: Option<String>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    tool_prices: Option<String>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::BigInt>)]
    input_per_mtok: Option<i64>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::BigInt>)]
    output_per_mtok: Option<i64>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::BigInt>)]
    per_generation: Option<i64>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::BigInt>)]
    input_tokens_cost: Option<i64>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::BigInt>)]
    output_tokens_cost: Option<i64>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::BigInt>)]
    tools_cost: Option<i64>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::BigInt>)]
    generations_cost: Option<i64>,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    total: i64,
}

fn charge_row(app: &TestApp, id: &str) -> UsageRow {
    let conn: &mut tally::db::DbConn = &mut app.conn();
    diesel::sql_query(
        "SELECT input_tokens, output_tokens, generations, tool_calls, tool_prices, input_per_mtok, \
         output_per_mtok, per_generation, input_tokens_cost, output_tokens_cost, tools_cost, \
         generations_cost, total FROM charges WHERE id = $1",
    )
    .bind::<diesel::sql_types::Text, _>(id)
    .get_result(conn)
    .unwrap()
}

async fn the_worked_example_charges_every_part_exactly(app: TestApp) {
    let (org, agent) = metered_market(&app, "0.05", 0).await;
    let alice = app.token("alice");
    let wallet = app.wallet_of("alice").await;
    app.fund(&wallet, "1").await;
    let (s, tools) = app.get("/v1/tools", &alice).await;
    assert_eq!(s, 200, "{tools}");
    assert_eq!(tools["data"][0]["id"], "web_search");
    assert_eq!(tools["data"][0]["price"], "0.01");
    let (s, _, b) = app.send(Method::GET, "/v1/tools", None, None, None).await;
    assert_error(s, &b, 401, "unauthorized");

    let (s, headers, c) = charge(&app, &alice, &agent, json!({ "usage": usage() }), "w1").await;
    assert_eq!(s, 201, "{c}");
    // 1234 x 0.15 / 10^6 = 0.0001851 -> 0.000186 and 567 x 0.6 / 10^6 =
    // 0.0003402 -> 0.000341 (rounded up to the micro-credit); 2 x 0.01;
    // 1 x 0.04; the add-on 0.05 split 0.015 / 0.035.
    assert_eq!(
        parts(&c),
        ["0.01", "0.000186", "0.000341", "0.02", "0.04", "0.015", "0.035", "0.120527", "0", "0"]
    );
    assert_eq!(
        (
            c["free"].as_bool(),
            c["total"].as_str(),
            c["runtime_infra"].as_str(),
            c["publisher_addon"].as_str()
        ),
        (Some(false), Some("0.120527"), Some("0.01"), Some("0.05"))
    );
    assert_eq!(c["usage"], usage());
    assert_eq!(c["balance_after"], "0.879473");
    assert_eq!(headers["x-request-cost"], "0.120527");
    assert_eq!(headers["x-balance-remaining"], "0.879473");

    // The same key and body replays the charge; nothing moves twice.
    let (s, headers, again) = charge(&app, &alice, &agent, json!({ "usage": usage() }), "w1").await;
    assert_eq!((s.as_u16(), &again), (201, &c));
    assert_eq!(headers["idempotent-replayed"], "true");

    let p = platform(&app);
    assert_eq!(app.balance(&wallet, &alice).await, "0.879473");
    // Runtime infra and every metered part go to infra revenue.
    assert_eq!(balance(&app, p.infra_revenue), "0.070527");
    assert_eq!(balance(&app, p.marketplace_revenue), "0.015");
    assert_eq!(pending(&app, &org), "0.035");
    assert_eq!(balance(&app, p.subsidy_expense), "0");
    assert_eq!(app.count("charges"), 1);
    assert_eq!(app.count("earnings_accruals"), 1);

    let row = charge_row(&app, c["id"].as_str().unwrap());
    assert_eq!(
        row,
        UsageRow {
            input_tokens: Some(1234),
            output_tokens: Some(567),
            generations: Some(1),
            tool_calls: Some(r#"{"web_search":2}"#.into()),
            tool_prices: Some(r#"{"web_search":"0.01"}"#.into()),
            input_per_mtok: Some(150_000),
            output_per_mtok: Some(600_000),
            per_generation: Some(40_000),
            input_tokens_cost: Some(186),
            output_tokens_cost: Some(341),
            tools_cost: Some(20_000),
            generations_cost: Some(40_000),
            total: 120_527,
        }
    );

    // A charge without usage on the same agent is today's flat price and
    // keeps no usage (its parts are the flat ones).
    let (s, _, flat) = charge(&app, &alice, &agent, json!({}), "w2").await;
    assert_eq!(s, 201, "{flat}");
    assert_eq!(flat["total"], "0.06");
    assert_eq!(flat["usage"], Value::Null, "{flat}");
    assert_eq!(parts(&flat), ["0.01", "0", "0", "0", "0", "0.015", "0.035", "0.06", "0", "0"]);
    let row = charge_row(&app, flat["id"].as_str().unwrap());
    assert_eq!((row.input_tokens, row.tool_calls, row.input_tokens_cost), (None, None, None));
    assert_eq!(app.balance(&wallet, &alice).await, "0.819473");

    let report = revenue(&app).await;
    assert_eq!(report["totals"]["infra_revenue"], "0.080527");
    assert_eq!(report["totals"]["marketplace_share"], "0.03");
    assert_eq!(report["totals"]["creator_earnings"], "0.07");
    app.assert_ledger_ok();
}

async fn a_free_message_with_usage_pays_the_metered_parts(app: TestApp) {
    let (org, agent) = metered_market(&app, "0.05", 1).await;
    let alice = app.token("alice");
    let wallet = app.wallet_of("alice").await;
    app.fund(&wallet, "1").await;
    let (s, headers, c) = charge(&app, &alice, &agent, json!({ "usage": usage() }), "f1").await;
    assert_eq!(s, 201, "{c}");
    // Free covers the per-message runtime infra (subsidy) and the add-on
    // (forgone); the tokens, tools and generations are still paid.
    assert_eq!(c["free"], true);
    assert_eq!(
        parts(&c),
        ["0", "0.000186", "0.000341", "0.02", "0.04", "0", "0", "0.060527", "0.01", "0.05"]
    );
    assert_eq!((c["total"].as_str(), c["publisher_addon"].as_str()), (Some("0.060527"), Some("0")));
    assert_eq!(headers["x-request-cost"], "0.060527");
    assert_eq!(c["free_messages_left"], 0);
    let p = platform(&app);
    assert_eq!(app.balance(&wallet, &alice).await, "0.939473");
    assert_eq!(balance(&app, p.subsidy_expense), "-0.01");
    assert_eq!(balance(&app, p.infra_revenue), "0.070527");
    assert_eq!(balance(&app, p.marketplace_revenue), "0");
    assert_eq!(pending(&app, &org), "0");
    let (_, page) = app.get(&format!("/v1/wallets/{wallet}/transactions?type=free_message"), &alice).await;
    assert_eq!(page["data"][0]["amount"], "-0.060527");

    // The next one is paid in full.
    let (s, _, c) = charge(&app, &alice, &agent, json!({ "usage": usage() }), "f2").await;
    assert_eq!(s, 201, "{c}");
    assert_eq!((c["free"].as_bool(), c["total"].as_str()), (Some(false), Some("0.120527")));
    assert_eq!(app.balance(&wallet, &alice).await, "0.818946");
    assert_eq!(balance(&app, p.infra_revenue), "0.141054");
    assert_eq!(balance(&app, p.marketplace_revenue), "0.015");
    assert_eq!(pending(&app, &org), "0.035");

    let report = revenue(&app).await;
    assert_eq!(report["totals"]["infra_revenue"], "0.131054");
    assert_eq!(report["totals"]["subsidies"], "0.01");
    assert_eq!(report["totals"]["addon_forgone"], "0.05");

    // A free message whose metered parts the wallet cannot pay is refused
    // whole: the free message is not used.
    let bob = app.token("bob");
    let (s, _, b) = charge(&app, &bob, &agent, json!({ "usage": usage() }), "f3").await;
    assert_error(s, &b, 402, "insufficient_funds");
    let (_, q) = app.get(&format!("/v1/agents/{agent}/quote"), &bob).await;
    assert_eq!(q["free_messages_left"], 1);
    // Without usage the free message costs bob nothing, as before.
    let (s, _, c) = charge(&app, &bob, &agent, json!({}), "f4").await;
    assert_eq!((s.as_u16(), c["free"].as_bool(), c["total"].as_str()), (201, Some(true), Some("0")));
    app.assert_ledger_ok();
}

async fn bad_usage_is_refused_and_changes_nothing(app: TestApp) {
    let (_, agent) = metered_market(&app, "0.05", 1).await;
    let alice = app.token("alice");
    let wallet = app.wallet_of("alice").await;
    app.fund(&wallet, "1").await;
    let entries = app.count("journal_entries");
    let many: serde_json::Map<String, Value> = (0..33).map(|i| (format!("t{i}"), json!(1))).collect();
    let cases = [
        (json!({"tool_calls": {"image_search": 1}}), "unknown_tool"),
        (json!({"input_tokens": -1}), "invalid_usage"),
        (json!({"output_tokens": 2.5}), "invalid_usage"),
        (json!({"tool_calls": {"web_search": -1}}), "invalid_usage"),
        (json!({"input_tokens": 10_000_001}), "invalid_usage"),
        (json!({"output_tokens": 1e12}), "invalid_usage"),
        (json!({"generations": 101}), "invalid_usage"),
        (json!({"tool_calls": {"web_search": 1001}}), "invalid_usage"),
        (json!({"tool_calls": many}), "invalid_usage"),
        (json!({"tool_calls": {"bad id": 1}}), "invalid_usage"),
    ];
    for (i, (usage, kind)) in cases.iter().enumerate() {
        let (s, _, b) = charge(&app, &alice, &agent, json!({ "usage": usage }), &format!("bad{i}")).await;
        assert_error(s, &b, 422, kind);
        let (s, _, b) = app
            .send(
                Method::POST,
                &format!("/v1/agents/{agent}/quote"),
                Some(&alice),
                Some(json!({ "usage": usage })),
                None,
            )
            .await;
        assert_error(s, &b, 422, kind);
    }
    let (_, _, b) = charge(&app, &alice, &agent, json!({"usage": {"input_tokens": 1.5}}), "m").await;
    assert_eq!(b["error"]["message"], "usage: input_tokens must be a whole number, not 1.5");
    let (_, _, b) = charge(&app, &alice, &agent, json!({"usage": {"input_tokens": -3}}), "m").await;
    assert_eq!(b["error"]["message"], "usage: input_tokens must not be negative, not -3");
    let (_, _, b) = charge(&app, &alice, &agent, json!({"usage": {"generations": 101}}), "m").await;
    assert_eq!(b["error"]["message"], "usage: generations must be at most 100, not 101");
    // A string count or an unknown usage field is a plain validation error.
    let (s, _, b) = charge(&app, &alice, &agent, json!({"usage": {"input_tokens": "5"}}), "m").await;
    assert_error(s, &b, 422, "validation_error");
    let (s, _, b) = charge(&app, &alice, &agent, json!({"usage": {"tokens": 5}}), "m").await;
    assert_error(s, &b, 422, "validation_error");
    // The maximums themselves are accepted (the quote shows their price).
    let max = json!({"input_tokens": 10_000_000, "output_tokens": 10_000_000,
                     "tool_calls": {"web_search": 1000}, "generations": 100});
    let (s, _, q) = app
        .send(
            Method::POST,
            &format!("/v1/agents/{agent}/quote"),
            Some(&alice),
            Some(json!({"usage": max})),
            None,
        )
        .await;
    assert_eq!(s, 200, "{q}");
    // 1.5 + 6 + 10 + 4 metered, the free message covers infra and add-on.
    assert_eq!((q["total"].as_str(), q["allowed"].as_bool()), (Some("21.5"), Some(false)));
    assert_eq!(app.count("journal_entries"), entries);
    assert_eq!(app.count("charges"), 0);
    assert_eq!(app.count("free_message_usage"), 0);
    assert_eq!(app.balance(&wallet, &alice).await, "1");
    app.assert_ledger_ok();
}

async fn unmetered_models_refuse_usage_but_not_zero_usage(app: TestApp) {
    // model-a has only its per-message price; web_search is priced.
    let (_, agent) = market(&app, "0.3", "1", 0, "public").await;
    let op = app.operator_token();
    let (s, t) = put(&app, "/v1/admin/tools/web_search", Some(&op), json!({"price": "0.01"})).await;
    assert_eq!(s, 200, "{t}");
    let (_, _, models) = app.send(Method::GET, "/v1/models", None, None, None).await;
    assert_eq!(models["data"][0]["input_per_mtok"], Value::Null);
    let alice = app.token("alice");
    let wallet = app.wallet_of("alice").await;
    app.fund(&wallet, "10").await;
    for (i, usage) in [
        json!({"input_tokens": 1}),
        json!({"output_tokens": 5, "input_tokens": 0}),
        json!({"generations": 1}),
    ]
    .iter()
    .enumerate()
    {
        let (s, _, b) = charge(&app, &alice, &agent, json!({ "usage": usage }), &format!("u{i}")).await;
        assert_error(s, &b, 422, "model_not_metered");
    }
    assert_eq!(app.count("charges"), 0);
    // Setting only the token rates still refuses generations.
    let (s, m) = put(
        &app,
        "/v1/admin/models/model-a",
        Some(&op),
        json!({"runtime_infra": "0.3", "provider_cost": "0.002", "input_per_mtok": "1", "output_per_mtok": "2"}),
    )
    .await;
    assert_eq!((s.as_u16(), m["per_generation"].clone()), (200, Value::Null), "{m}");
    let (s, _, b) = charge(&app, &alice, &agent, json!({"usage": {"generations": 2}}), "g").await;
    assert_error(s, &b, 422, "model_not_metered");
    // PUT replaces: leaving the rates out makes the model flat again.
    let (s, _) = put(
        &app,
        "/v1/admin/models/model-a",
        Some(&op),
        json!({"runtime_infra": "0.3", "provider_cost": "0.002"}),
    )
    .await;
    assert_eq!(s, 200);
    let (s, _, b) = charge(&app, &alice, &agent, json!({"usage": {"input_tokens": 10}}), "t").await;
    assert_error(s, &b, 422, "model_not_metered");
    assert_eq!(app.balance(&wallet, &alice).await, "10");

    // An all-zero usage (or tools alone, priced by the tool list) is fine
    // on an unmetered model: the flat price, plus the tools.
    let (s, _, c) =
        charge(&app, &alice, &agent, json!({"usage": {"input_tokens": 0, "generations": 0}}), "z").await;
    assert_eq!(s, 201, "{c}");
    assert_eq!(parts(&c), ["0.3", "0", "0", "0", "0", "0.3", "0.7", "1.3", "0", "0"]);
    let (s, _, c) =
        charge(&app, &alice, &agent, json!({"usage": {"tool_calls": {"web_search": 3}}}), "w").await;
    assert_eq!(s, 201, "{c}");
    assert_eq!(c["total"], "1.33");
    assert_eq!(app.balance(&wallet, &alice).await, "7.37");
    app.assert_ledger_ok();
}

async fn price_book_and_tool_prices_are_validated(app: TestApp) {
    let op = app.operator_token();
    let base = json!({"runtime_infra": "0.01", "provider_cost": "0.002"});
    for (field, value) in [
        ("input_per_mtok", json!("-1")),
        ("output_per_mtok", json!("0.0000001")),
        ("per_generation", json!(0.04)),
        ("input_per_mtok", json!("abc")),
    ] {
        let mut body = base.clone();
        body[field] = value;
        let (s, b) = put(&app, "/v1/admin/models/model-x", Some(&op), body).await;
        assert_error(s, &b, 422, "validation_error");
    }
    assert_eq!(app.count("models"), 0);
    let (s, b) = put(&app, "/v1/admin/tools/web_search", Some(&op), json!({"price": "-0.01"})).await;
    assert_error(s, &b, 422, "validation_error");
    let (s, b) = put(&app, "/v1/admin/tools/web_search", Some(&op), json!({"price": 0.01})).await;
    assert_error(s, &b, 422, "validation_error");
    let (s, b) = put(&app, "/v1/admin/tools/web_search", Some(&op), json!({"price": "0.0000001"})).await;
    assert_error(s, &b, 422, "validation_error");
    let (s, b) = put(&app, "/v1/admin/tools/web%20search", Some(&op), json!({"price": "0.01"})).await;
    assert_error(s, &b, 422, "validation_error");
    let long = "t".repeat(101);
    let (s, b) = put(&app, &format!("/v1/admin/tools/{long}"), Some(&op), json!({"price": "0.01"})).await;
    assert_error(s, &b, 422, "validation_error");
    let (s, b) = put(&app, "/v1/admin/tools/web_search", Some(&op), json!({})).await;
    assert_error(s, &b, 422, "validation_error");
    let (s, b) =
        put(&app, "/v1/admin/tools/web_search", Some(&app.token("alice")), json!({"price": "1"})).await;
    assert_error(s, &b, 403, "forbidden");
    let (s, b) = put(&app, "/v1/admin/tools/web_search", None, json!({"price": "1"})).await;
    assert_error(s, &b, 401, "unauthorized");
    assert_eq!(app.count("tools"), 0);
    // A price of zero is a free tool; a second PUT reprices it.
    let (s, t) = put(&app, "/v1/admin/tools/web_search", Some(&op), json!({"price": "0"})).await;
    assert_eq!((s.as_u16(), t["price"].as_str()), (200, Some("0")));
    let (s, t) = put(&app, "/v1/admin/tools/web_search", Some(&op), json!({"price": "0.02"})).await;
    assert_eq!((s.as_u16(), t["price"].as_str()), (200, Some("0.02")));
    let (_, list) = app.get("/v1/tools", &app.token("alice")).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    assert_eq!(list["data"][0]["price"], "0.02");
}

async fn quotes_with_usage_say_whether_the_charge_would_go_through(app: TestApp) {
    let (_, agent) = metered_market(&app, "0.05", 0).await;
    let alice = app.token("alice");
    let wallet = app.wallet_of("alice").await;
    app.fund(&wallet, "0.2").await;
    let quote = |body: Value| {
        let (app, alice, agent) = (&app, &alice, &agent);
        async move {
            let (s, _, q) = app
                .send(Method::POST, &format!("/v1/agents/{agent}/quote"), Some(alice), Some(body), None)
                .await;
            assert_eq!(s, 200, "{q}");
            q
        }
    };
    let entries = app.count("journal_entries");
    let q = quote(json!({ "usage": usage() })).await;
    assert_eq!(
        (q["total"].as_str(), q["allowed"].as_bool(), q["sufficient"].as_bool(), q["balance"].as_str()),
        (Some("0.120527"), Some(true), Some(true), Some("0.2"))
    );
    assert_eq!((q["reason"].clone(), q["message"].clone()), (Value::Null, Value::Null));
    assert_eq!(
        parts(&q),
        ["0.01", "0.000186", "0.000341", "0.02", "0.04", "0.015", "0.035", "0.120527", "0", "0"]
    );
    assert_eq!(q["usage"], usage());
    // Without usage (or an empty body): the flat price, as the GET says.
    let q = quote(json!({})).await;
    assert_eq!((q["total"].as_str(), q["allowed"].as_bool()), (Some("0.06"), Some(true)));
    let (_, get) = app.get(&format!("/v1/agents/{agent}/quote"), &alice).await;
    assert_eq!(get["total"], "0.06");
    assert!(get.get("allowed").is_none(), "{get}");

    // Above the balance: not allowed, insufficient_funds.
    let q = quote(json!({"usage": {"output_tokens": 1_000_000}})).await;
    assert_eq!(
        (q["total"].as_str(), q["allowed"].as_bool(), q["reason"].as_str(), q["sufficient"].as_bool()),
        (Some("0.66"), Some(false), Some("insufficient_funds"), Some(false))
    );
    // A spend limit is checked before the balance, as a charge checks it.
    let (s, w) = app.patch(&format!("/v1/wallets/{wallet}"), &alice, json!({"daily_limit": "0.1"})).await;
    assert_eq!(s, 200, "{w}");
    let q = quote(json!({ "usage": usage() })).await;
    assert_eq!((q["allowed"].as_bool(), q["reason"].as_str()), (Some(false), Some("spend_limit_exceeded")));
    assert!(q["message"].as_str().unwrap().contains("daily spend limit"), "{q}");
    let (s, _, b) = charge(&app, &alice, &agent, json!({ "usage": usage() }), "q1").await;
    assert_error(s, &b, 429, "spend_limit_exceeded");
    // Within the limit: allowed, and the charge agrees.
    let q = quote(json!({"usage": {"input_tokens": 100}})).await;
    assert_eq!((q["total"].as_str(), q["allowed"].as_bool()), (Some("0.060015"), Some(true)));
    let (s, _, c) = charge(&app, &alice, &agent, json!({"usage": {"input_tokens": 100}}), "q2").await;
    assert_eq!((s.as_u16(), c["total"].as_str()), (201, Some("0.060015")));
    // The counter now holds 0.060015: another such message passes the limit.
    let q = quote(json!({"usage": {"input_tokens": 100}})).await;
    assert_eq!(q["reason"], "spend_limit_exceeded");
    app.patch(&format!("/v1/wallets/{wallet}"), &alice, json!({"daily_limit": null})).await;
    let q = quote(json!({"usage": {"input_tokens": 100}})).await;
    assert_eq!(q["allowed"], true);

    // A frozen wallet comes first.
    let (s, _, b) = app
        .send(
            Method::POST,
            &format!("/v1/admin/wallets/{wallet}/freeze"),
            Some(&app.operator_token()),
            Some(json!({"reason": "review"})),
            None,
        )
        .await;
    assert!(s.is_success(), "{b}");
    let q = quote(json!({ "usage": usage() })).await;
    assert_eq!((q["allowed"].as_bool(), q["reason"].as_str()), (Some(false), Some("wallet_frozen")));

    // Refusals of the quote itself.
    let (s, _, b) = app
        .send(
            Method::POST,
            "/v1/agents/agt_nope/quote",
            Some(&alice),
            Some(json!({ "usage": usage() })),
            None,
        )
        .await;
    assert_error(s, &b, 404, "not_found");
    let (s, _, b) =
        app.send(Method::POST, &format!("/v1/agents/{agent}/quote"), None, Some(json!({})), None).await;
    assert_error(s, &b, 401, "unauthorized");
    // A quote moves nothing: only the one charge made an entry.
    assert_eq!(app.count("journal_entries"), entries + 1);
    assert_eq!(app.balance(&wallet, &alice).await, "0.139985");
    app.assert_ledger_ok();
}
