//! Metadata on charges, holds, top-ups, organizations and agents, and a
//! wallet's charges listed by it.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::both;
use crate::charges::{charge, market};
use crate::helpers::{assert_error, TestApp};
use crate::holds::{capture, hold};

both!(
    charges_carry_metadata_and_are_listed_by_it,
    bad_metadata_is_refused_and_changes_nothing,
    holds_orgs_and_agents_carry_metadata,
    org_members_list_only_their_own_charges,
    top_ups_carry_metadata,
    bad_top_up_metadata_is_refused_and_changes_nothing,
);

async fn list(app: &TestApp, token: &str, wallet: &str, query: &str) -> (StatusCode, Value) {
    app.get(&format!("/v1/wallets/{wallet}/charges{query}"), token).await
}

/// The ids of a page, in order.
fn ids(page: &Value) -> Vec<String> {
    page["data"].as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap().to_string()).collect()
}

async fn charges_carry_metadata_and_are_listed_by_it(app: TestApp) {
    let (_, agent) = market(&app, "0.3", "1", 0, "public").await;
    let alice = app.token("alice");
    let wallet = app.wallet_of("alice").await;
    app.fund(&wallet, "10").await;
    let mut made = Vec::new();
    for (i, meta) in [
        json!({"conversation_id": "c1", "message_id": "m1"}),
        json!({"conversation_id": "c1", "message_id": "m2"}),
        json!({"conversation_id": "c2", "message_id": "m3"}),
        Value::Null,
    ]
    .into_iter()
    .enumerate()
    {
        let body = if meta.is_null() { json!({}) } else { json!({ "metadata": meta }) };
        let (s, _, c) = charge(&app, &alice, &agent, body, &format!("k{i}")).await;
        assert_eq!((s.as_u16(), c["total"].as_str()), (201, Some("1.3")), "{c}");
        let shown = if meta.is_null() { json!({}) } else { meta };
        assert_eq!(c["metadata"], shown, "{c}");
        made.push(c);
    }
    let id = |i: usize| made[i]["id"].as_str().unwrap().to_string();
    // A retry replays the stored response, pairs included; nothing more is written.
    let (s, h, again) = charge(
        &app,
        &alice,
        &agent,
        json!({"metadata": {"conversation_id": "c1", "message_id": "m1"}}),
        "k0",
    )
    .await;
    assert_eq!(s, 201);
    assert!(h.contains_key("idempotent-replayed"));
    assert_eq!(again, made[0]);
    assert_eq!(app.balance(&wallet, &alice).await, "4.8", "four charges of 1.3 from 10");
    assert_eq!(app.count("object_metadata"), 6);

    let (s, one) = app.get(&format!("/v1/charges/{}", id(1)), &alice).await;
    assert_eq!(s, 200);
    assert_eq!(one["metadata"], json!({"conversation_id": "c1", "message_id": "m2"}));

    let (s, all) = list(&app, &alice, &wallet, "").await;
    assert_eq!(s, 200, "{all}");
    assert_eq!(ids(&all), [id(3), id(2), id(1), id(0)], "newest first");
    assert_eq!(all["has_more"], false);
    assert_eq!(all["data"][3], made[0], "as the charge was answered");

    let (s, c1) = list(&app, &alice, &wallet, "?metadata[conversation_id]=c1").await;
    assert_eq!(s, 200, "{c1}");
    assert_eq!(ids(&c1), [id(1), id(0)]);
    let (_, both) =
        list(&app, &alice, &wallet, "?metadata[conversation_id]=c1&metadata[message_id]=m1").await;
    assert_eq!(ids(&both), [id(0)], "every pair must match");
    let (_, none) = list(&app, &alice, &wallet, "?metadata[conversation_id]=c3").await;
    assert_eq!(ids(&none), Vec::<String>::new());
    // Percent-encoded keys and values are decoded.
    let (_, encoded) = list(&app, &alice, &wallet, "?metadata%5Bconversation_id%5D=c%32").await;
    assert_eq!(ids(&encoded), [id(2)]);

    let (_, page1) = list(&app, &alice, &wallet, "?limit=1&metadata[conversation_id]=c1").await;
    assert_eq!((ids(&page1), &page1["has_more"]), (vec![id(1)], &json!(true)));
    let (_, page2) = list(
        &app,
        &alice,
        &wallet,
        &format!("?limit=1&metadata[conversation_id]=c1&starting_after={}", id(1)),
    )
    .await;
    assert_eq!((ids(&page2), &page2["has_more"]), (vec![id(0)], &json!(false)));

    // Another person's wallet is not found.
    let (s, b) = list(&app, &app.token("bob"), &wallet, "").await;
    assert_error(s, &b, 404, "not_found");
    app.assert_ledger_ok();
}

async fn bad_metadata_is_refused_and_changes_nothing(app: TestApp) {
    let (_, agent) = market(&app, "0.3", "1", 0, "public").await;
    let alice = app.token("alice");
    let wallet = app.wallet_of("alice").await;
    app.fund(&wallet, "10").await;
    let twenty_one: serde_json::Map<String, Value> = (0..21).map(|i| (format!("k{i}"), json!("v"))).collect();
    for (i, meta) in [
        Value::Object(twenty_one),
        json!({ "k".repeat(41): "v" }),
        json!({ "k": "v".repeat(501) }),
        json!({ "": "v" }),
        json!({ "a[b]": "v" }),
        json!({ "k": "bell\u{7}" }),
    ]
    .into_iter()
    .enumerate()
    {
        let (s, _, b) = charge(&app, &alice, &agent, json!({ "metadata": meta }), &format!("bad{i}")).await;
        assert_error(s, &b, 422, "validation_error");
        let (s, b) = hold(
            &app,
            &alice,
            &agent,
            json!({"estimate": {"amount": "1"}, "metadata": meta}),
            &format!("h{i}"),
        )
        .await;
        assert_error(s, &b, 422, "validation_error");
    }
    // Only strings: a number is not a value.
    let (s, _, b) = charge(&app, &alice, &agent, json!({"metadata": {"n": 1}}), "num").await;
    assert_eq!(s.as_u16() / 100, 4, "{b}");
    let (s, b) = app.post("/v1/orgs", &alice, json!({"name": "X", "metadata": {"": "v"}})).await;
    assert_error(s, &b, 422, "validation_error");
    assert_eq!(app.balance(&wallet, &alice).await, "10");
    assert_eq!((app.count("charges"), app.count("holds"), app.count("object_metadata")), (0, 0, 0));
    assert_eq!(app.count("orgs"), 1, "only the creator's");

    for query in
        ["?metadata[a[b]]=x", "?metadata=x", "?metadata[]=x", "?metadata[k]=a&metadata[k]=b", "?limit=0"]
    {
        let (s, b) = list(&app, &alice, &wallet, query).await;
        assert_error(s, &b, 422, "validation_error");
    }
    let (s, b) = list(&app, &alice, &wallet, "?starting_after=chg_unknown").await;
    assert_error(s, &b, 404, "not_found");
}

async fn holds_orgs_and_agents_carry_metadata(app: TestApp) {
    let (_, agent) = market(&app, "0.3", "1", 0, "public").await;
    let alice = app.token("alice");
    let wallet = app.wallet_of("alice").await;
    app.fund(&wallet, "10").await;

    let (s, h) = hold(
        &app,
        &alice,
        &agent,
        json!({"estimate": {"amount": "2"}, "metadata": {"conversation_id": "c9"}}),
        "h1",
    )
    .await;
    assert_eq!(s, 201, "{h}");
    assert_eq!(h["metadata"], json!({"conversation_id": "c9"}));
    let hold_id = h["id"].as_str().unwrap();
    let (_, shown) = app.get(&format!("/v1/holds/{hold_id}"), &alice).await;
    assert_eq!(shown["metadata"], json!({"conversation_id": "c9"}));
    let (s, _, c) = capture(&app, &alice, hold_id, json!({}), "cap1").await;
    assert_eq!((s.as_u16(), c["total"].as_str()), (201, Some("1.3")), "{c}");
    assert_eq!(c["metadata"], json!({"conversation_id": "c9"}), "a capture keeps its hold's pairs");
    let (_, listed) = list(&app, &alice, &wallet, "?metadata[conversation_id]=c9").await;
    assert_eq!(ids(&listed), [c["id"].as_str().unwrap()]);
    assert_eq!(app.balance(&wallet, &alice).await, "8.7");

    let (s, org) = app.post("/v1/orgs", &alice, json!({"name": "Acme", "metadata": {"crm_id": "A-1"}})).await;
    assert_eq!(s, 201, "{org}");
    assert_eq!(org["metadata"], json!({"crm_id": "A-1"}));
    let org_id = org["id"].as_str().unwrap();
    let (_, again) = app.get(&format!("/v1/orgs/{org_id}"), &alice).await;
    assert_eq!(again["metadata"], json!({"crm_id": "A-1"}));

    let (s, a) = app
        .post(
            &format!("/v1/orgs/{org_id}/agents"),
            &alice,
            json!({"name": "Bot", "model": "model-a", "metadata": {"repo": "acme/bot", "team": "ml"}}),
        )
        .await;
    assert_eq!(s, 201, "{a}");
    assert_eq!(a["metadata"], json!({"repo": "acme/bot", "team": "ml"}));
    let path = format!("/v1/agents/{}", a["id"].as_str().unwrap());
    let (s, b) = app.patch(&path, &alice, json!({"name": "Bot 2"})).await;
    assert_eq!(
        (s.as_u16(), &b["metadata"]),
        (200, &json!({"repo": "acme/bot", "team": "ml"})),
        "kept when absent"
    );
    let (s, b) = app.patch(&path, &alice, json!({"metadata": {"team": "infra"}})).await;
    assert_eq!((s.as_u16(), &b["metadata"]), (200, &json!({"team": "infra"})), "replaced whole");
    let (_, b) = app.get(&path, &alice).await;
    assert_eq!(b["metadata"], json!({"team": "infra"}));
    let (s, b) = app.patch(&path, &alice, json!({"metadata": {}})).await;
    assert_eq!((s.as_u16(), &b["metadata"]), (200, &json!({})), "removed");
    let (s, b) = app.patch(&path, &alice, json!({"metadata": {"x": "y".repeat(501)}})).await;
    assert_error(s, &b, 422, "validation_error");
    let (_, b) = app.get(&path, &alice).await;
    assert_eq!(
        (b["name"].as_str(), &b["metadata"]),
        (Some("Bot 2"), &json!({})),
        "a refused patch changes nothing"
    );
    app.assert_ledger_ok();
}

async fn org_members_list_only_their_own_charges(app: TestApp) {
    let (_, agent) = market(&app, "0.3", "1", 0, "public").await;
    let owner = app.token("olga");
    let (s, org) = app.post("/v1/orgs", &owner, json!({"name": "Payers"})).await;
    assert_eq!(s, 201);
    let org_id = org["id"].as_str().unwrap();
    let wallet = org["wallet_id"].as_str().unwrap();
    app.fund(wallet, "10").await;
    let (s, b) = app.post(&format!("/v1/orgs/{org_id}/members"), &owner, json!({"user_id": "mia"})).await;
    assert_eq!(s, 201, "{b}");
    let mia = app.token("mia");
    let mut made = Vec::new();
    for (who, token) in [("olga", &owner), ("mia", &mia)] {
        let (s, _, c) = charge(
            &app,
            token,
            &agent,
            json!({"org_id": org_id, "metadata": {"conversation_id": "shared"}}),
            &format!("{who}-1"),
        )
        .await;
        assert_eq!(s, 201, "{c}");
        made.push(c["id"].as_str().unwrap().to_string());
    }
    let (_, all) = list(&app, &owner, wallet, "?metadata[conversation_id]=shared").await;
    assert_eq!(ids(&all), [made[1].clone(), made[0].clone()], "the owner sees every member's");
    let (_, own) = list(&app, &mia, wallet, "?metadata[conversation_id]=shared").await;
    assert_eq!(ids(&own), [made[1].clone()], "a member sees their own");
    let (s, _, _) = app
        .send(Method::GET, &format!("/v1/wallets/{wallet}/charges"), Some(&app.token("stranger")), None, None)
        .await;
    assert_eq!(s, 404);
    assert_eq!(app.balance(wallet, &owner).await, "7.4");
}

async fn buy(app: &TestApp, token: &str, wallet: &str, body: Value, key: &str) -> (StatusCode, bool, Value) {
    let (s, h, b) = app
        .send(Method::POST, &format!("/v1/wallets/{wallet}/top-ups"), Some(token), Some(body), Some(key))
        .await;
    (s, h.contains_key("idempotent-replayed"), b)
}

async fn top_ups_carry_metadata(app: TestApp) {
    let alice = app.token("alice");
    let op = app.operator_token();
    let wallet = app.wallet_of("alice").await;
    let pairs = json!({"invoice_ref": "INV-2026-0042", "crm_id": "A-1"});
    let body = json!({"pack_id": "starter", "metadata": pairs});
    let (s, replayed, made) = buy(&app, &alice, &wallet, body.clone(), "buy-1").await;
    assert_eq!((s.as_u16(), replayed), (201, false), "{made}");
    assert_eq!(
        (made["status"].as_str(), made["method"].as_str(), made["credits"].as_str()),
        (Some("pending"), Some("manual"), Some("50"))
    );
    assert_eq!(made["metadata"], pairs);
    let id = made["id"].as_str().unwrap().to_string();
    // A retry replays the stored response, pairs included; nothing more is written.
    let (s, replayed, again) = buy(&app, &alice, &wallet, body, "buy-1").await;
    assert_eq!((s.as_u16(), replayed), (201, true));
    assert_eq!(again, made);
    // The same key with other pairs is another request: refused, nothing written.
    let (s, _, b) =
        buy(&app, &alice, &wallet, json!({"pack_id": "starter", "metadata": {"crm_id": "B-2"}}), "buy-1")
            .await;
    assert_error(s, &b, 422, "idempotency_key_reused");
    assert_eq!((app.count("top_ups"), app.count("object_metadata")), (1, 2));

    let (s, shown) = app.get(&format!("/v1/top-ups/{id}"), &alice).await;
    assert_eq!((s.as_u16(), &shown), (200, &made));
    let (s, _, paid) = app
        .send(Method::POST, &format!("/v1/admin/top-ups/{id}/settle"), Some(&op), None, Some("settle-1"))
        .await;
    assert_eq!(
        (s.as_u16(), paid["status"].as_str(), paid["receipt_number"].as_i64()),
        (200, Some("paid"), Some(1))
    );
    assert_eq!(paid["metadata"], pairs, "kept when settled");
    assert_eq!(app.balance(&wallet, &alice).await, "50");

    // Without pairs, the object says so with an empty map.
    let (s, _, plain) = buy(&app, &alice, &wallet, json!({"pack_id": "starter"}), "buy-2").await;
    assert_eq!((s.as_u16(), &plain["metadata"]), (201, &json!({})), "{plain}");

    let (s, listed) = app.get(&format!("/v1/wallets/{wallet}/top-ups"), &alice).await;
    assert_eq!(s, 200, "{listed}");
    let shown: Vec<(&str, &Value)> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["id"].as_str().unwrap(), &t["metadata"]))
        .collect();
    assert_eq!(shown, [(plain["id"].as_str().unwrap(), &json!({})), (id.as_str(), &pairs)], "newest first");
    let (s, admin) = app.get("/v1/admin/top-ups?status=paid", &op).await;
    assert_eq!(s, 200, "{admin}");
    assert_eq!(admin["data"].as_array().unwrap().len(), 1);
    assert_eq!((admin["data"][0]["id"].as_str(), &admin["data"][0]["metadata"]), (Some(id.as_str()), &pairs));

    // The event of the payment carries the top-up as the API shows it.
    let (s, events) = app.get("/v1/events?type=top_up.paid", &alice).await;
    assert_eq!(s, 200, "{events}");
    assert_eq!(events["data"].as_array().unwrap().len(), 1, "{events}");
    assert_eq!(events["data"][0]["data"]["metadata"], pairs);

    // A refund answers with the top-up, pairs included.
    let (s, _, r) = app
        .send(
            Method::POST,
            &format!("/v1/admin/top-ups/{id}/refund"),
            Some(&op),
            Some(json!({"amount": "1.00", "reason": "goodwill"})),
            Some("refund-1"),
        )
        .await;
    assert_eq!((s.as_u16(), r["credits_taken_back"].as_str()), (200, Some("10")), "{r}");
    assert_eq!(r["top_up"]["metadata"], pairs);
    assert_eq!(app.balance(&wallet, &alice).await, "40");
    assert_eq!(app.count("object_metadata"), 2);
    app.assert_ledger_ok();
}

async fn bad_top_up_metadata_is_refused_and_changes_nothing(app: TestApp) {
    let alice = app.token("alice");
    let wallet = app.wallet_of("alice").await;
    let twenty_one: serde_json::Map<String, Value> = (0..21).map(|i| (format!("k{i}"), json!("v"))).collect();
    for (i, meta) in [
        Value::Object(twenty_one),
        json!({ "k".repeat(41): "v" }),
        json!({ "k": "v".repeat(501) }),
        json!({ "": "v" }),
        json!({ "a[b]": "v" }),
        json!({ "k": "bell\u{7}" }),
    ]
    .into_iter()
    .enumerate()
    {
        let (s, _, b) =
            buy(&app, &alice, &wallet, json!({"pack_id": "starter", "metadata": meta}), &format!("bad{i}"))
                .await;
        assert_error(s, &b, 422, "validation_error");
    }
    let (s, _, b) =
        buy(&app, &alice, &wallet, json!({"pack_id": "starter", "metadata": {"n": 1}}), "num").await;
    assert_eq!(s.as_u16() / 100, 4, "{b}");
    assert_eq!((app.count("top_ups"), app.count("object_metadata")), (0, 0));
    // Twenty pairs of the longest keys and values are within bounds.
    let most: serde_json::Map<String, Value> =
        (0..20).map(|i| (format!("{i:0>40}"), json!("é".repeat(500)))).collect();
    let (s, _, t) = buy(
        &app,
        &alice,
        &wallet,
        json!({"pack_id": "starter", "metadata": Value::Object(most.clone())}),
        "max",
    )
    .await;
    assert_eq!(s, 201, "{t}");
    assert_eq!(t["metadata"], Value::Object(most));
    assert_eq!((app.count("top_ups"), app.count("object_metadata")), (1, 20));
}
