//! API keys: made, used, listed, changed, revoked and expired; the key's
//! daily limit under 64 concurrent charges and with holds; org keys within
//! the member limit; endpoints a key may not use; other people's keys;
//! and a key never written to the server's log.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sha2::Digest;

use crate::both;
use crate::charges::{charge, market};
use crate::helpers::{assert_error, fresh_database, Backend, TestApp, SECRET};
use crate::holds::{hold, release};

both!(
    keys_are_made_used_listed_changed_and_revoked,
    expired_keys_are_refused_whatever_the_balance,
    a_key_limit_holds_under_64_concurrent_charges,
    holds_count_against_the_key_limit_like_charges,
    an_org_key_pays_the_org_wallet_within_the_member_limit,
    keys_are_refused_where_they_are_not_allowed,
    another_persons_key_is_not_found,
);

/// Makes a key with `body` as `token`; returns the 201 body.
pub async fn make_key(app: &TestApp, token: &str, body: Value) -> Value {
    let (s, k) = app.post("/v1/api-keys", token, body).await;
    assert_eq!(s, 201, "{k}");
    k
}

fn id(v: &Value) -> String {
    v["id"].as_str().unwrap_or_else(|| panic!("id in {v}")).to_string()
}

fn secret(v: &Value) -> String {
    v["secret"].as_str().unwrap_or_else(|| panic!("secret in {v}")).to_string()
}

async fn keys_are_made_used_listed_changed_and_revoked(app: TestApp) {
    let (_, agent) = market(&app, "0.3", "1", 0, "public").await;
    let alice = app.token("alice");
    let wallet = app.wallet_of("alice").await;
    app.fund(&wallet, "20").await;

    let k = make_key(&app, &alice, json!({"name": "prod server", "daily_limit": "10"})).await;
    let key_id = id(&k);
    let sk = secret(&k);
    assert!(key_id.starts_with("ak_"), "{k}");
    assert!(sk.starts_with("tk_live_") && sk.len() == 8 + 48, "{sk}");
    assert!(sk[8..].bytes().all(|b| b.is_ascii_hexdigit()), "{sk}");
    assert_eq!(k["prefix"], &sk[..16]);
    assert_eq!(
        (k["name"].as_str(), k["wallet_id"].as_str(), k["user_id"].as_str()),
        (Some("prod server"), Some(wallet.as_str()), Some("alice"))
    );
    assert_eq!((k["daily_limit"].as_str(), k["spent_today"].as_str()), (Some("10"), Some("0")));
    assert_eq!(k["daily_remaining"], "10");
    assert!(k["org_id"].is_null() && k["expires_at"].is_null() && k["revoked_at"].is_null(), "{k}");
    assert!(k["last_used_at"].is_null(), "{k}");
    // Only the SHA-256 of the secret is stored.
    let hashed = hex::encode(sha2::Sha256::digest(sk.as_bytes()));
    assert_eq!(stored_hash(&app, &key_id), hashed);

    // The key acts as alice on the endpoints keys may use.
    let (s, me) = app.get("/v1/me", &sk).await;
    assert_eq!((s.as_u16(), me["id"].as_str()), (200, Some("alice")), "{me}");
    let (s, headers, c) = charge(&app, &sk, &agent, json!({}), "k-1").await;
    assert_eq!(s, 201, "{c}");
    assert_eq!((c["total"].as_str(), c["wallet_id"].as_str()), (Some("1.3"), Some(wallet.as_str())));
    assert_eq!(headers["x-key-daily-remaining"], "8.7");
    assert_eq!(headers["x-balance-remaining"], "18.7");
    // The replay carries the same header.
    let (s, headers, again) = charge(&app, &sk, &agent, json!({}), "k-1").await;
    assert_eq!((s.as_u16(), again["id"].clone()), (201, c["id"].clone()));
    assert_eq!(headers["x-key-daily-remaining"], "8.7");
    let (s, w) = app.get(&format!("/v1/wallets/{wallet}"), &sk).await;
    assert_eq!((s.as_u16(), w["balance"].as_str()), (200, Some("18.7")), "{w}");
    let (s, page) = app.get(&format!("/v1/wallets/{wallet}/transactions"), &sk).await;
    assert_eq!((s.as_u16(), page["data"][0]["amount"].as_str()), (200, Some("-1.3")), "{page}");
    let (s, seen) = app.get(&format!("/v1/charges/{}", id(&c)), &sk).await;
    assert_eq!((s.as_u16(), seen["total"].as_str()), (200, Some("1.3")), "{seen}");
    // A charge made with a JWT counts nothing against the key.
    let (s, headers, _) = charge(&app, &alice, &agent, json!({}), "jwt-1").await;
    assert_eq!(s, 201);
    assert!(headers.get("x-key-daily-remaining").is_none());

    let (s, k) = app.get(&format!("/v1/api-keys/{key_id}"), &alice).await;
    assert_eq!(s, 200, "{k}");
    assert_eq!((k["spent_today"].as_str(), k["daily_remaining"].as_str()), (Some("1.3"), Some("8.7")));
    assert!(k["last_used_at"].is_string(), "{k}");
    assert!(k.get("secret").is_none() && k.get("secret_hash").is_none(), "{k}");
    // Marked used at most once a minute: more uses leave it as it is.
    let (s, _) = app.get("/v1/me", &sk).await;
    assert_eq!(s, 200);
    let (_, again) = app.get(&format!("/v1/api-keys/{key_id}"), &alice).await;
    assert_eq!(again["last_used_at"], k["last_used_at"]);

    // Two more keys; the list pages newest first, and holds no one else's.
    let k2 = make_key(&app, &alice, json!({"name": "second"})).await;
    let k3 = make_key(&app, &alice, json!({"name": "third"})).await;
    make_key(&app, &app.token("bob"), json!({"name": "bob's"})).await;
    let (s, p1) = app.get("/v1/api-keys?limit=2", &alice).await;
    assert_eq!(s, 200, "{p1}");
    let ids = |p: &Value| p["data"].as_array().unwrap().iter().map(id).collect::<Vec<_>>();
    assert_eq!((ids(&p1), p1["has_more"].as_bool()), (vec![id(&k3), id(&k2)], Some(true)));
    let (_, p2) = app.get(&format!("/v1/api-keys?limit=2&starting_after={}", id(&k2)), &alice).await;
    assert_eq!((ids(&p2), p2["has_more"].as_bool()), (vec![key_id.clone()], Some(false)));
    assert!(p2["data"][0].get("secret").is_none());
    let (s, b) = app.get("/v1/api-keys?limit=0", &alice).await;
    assert_error(s, &b, 422, "validation_error");

    // PATCH changes name and limit; null removes the limit.
    let (s, k) = app
        .patch(&format!("/v1/api-keys/{key_id}"), &alice, json!({"name": "renamed", "daily_limit": "2"}))
        .await;
    assert_eq!(s, 200, "{k}");
    assert_eq!((k["name"].as_str(), k["daily_limit"].as_str()), (Some("renamed"), Some("2")));
    assert_eq!(k["daily_remaining"], "0.7");
    let (s, b) = app.patch(&format!("/v1/api-keys/{key_id}"), &alice, json!({"daily_limit": "-1"})).await;
    assert_error(s, &b, 422, "validation_error");
    let (s, b) = app.patch(&format!("/v1/api-keys/{key_id}"), &alice, json!({"daily_limit": 5})).await;
    assert_error(s, &b, 422, "validation_error");
    // The new limit holds at once.
    let (s, _, b) = charge(&app, &sk, &agent, json!({}), "k-2").await;
    assert_error(s, &b, 429, "spend_limit_exceeded");
    let (s, k) = app.patch(&format!("/v1/api-keys/{key_id}"), &alice, json!({"daily_limit": null})).await;
    assert_eq!(s, 200);
    assert!(k["daily_limit"].is_null() && k["daily_remaining"].is_null(), "{k}");
    let (s, headers, _) = charge(&app, &sk, &agent, json!({}), "k-3").await;
    assert_eq!(s, 201);
    assert!(headers.get("x-key-daily-remaining").is_none(), "no limit, no header");

    // Revoked: 401 api_key_revoked on the next request, credits or not.
    let before = app.balance(&wallet, &alice).await;
    let (s, _, r) =
        app.send(Method::DELETE, &format!("/v1/api-keys/{key_id}"), Some(&alice), None, None).await;
    assert_eq!(s, 200, "{r}");
    let revoked_at = r["revoked_at"].as_str().expect("revoked_at").to_string();
    let (s, _, b) = charge(&app, &sk, &agent, json!({}), "k-4").await;
    assert_error(s, &b, 401, "api_key_revoked");
    let (s, b) = app.get("/v1/me", &sk).await;
    assert_error(s, &b, 401, "api_key_revoked");
    assert_eq!(app.balance(&wallet, &alice).await, before);
    // Revoking again changes nothing.
    let (s, _, r) =
        app.send(Method::DELETE, &format!("/v1/api-keys/{key_id}"), Some(&alice), None, None).await;
    assert_eq!((s.as_u16(), r["revoked_at"].as_str()), (200, Some(revoked_at.as_str())));
    // The other keys still work.
    let (s, _) = app.get("/v1/me", &secret(&k2)).await;
    assert_eq!(s, 200);

    // Unknown and malformed keys get the same answer.
    let unknown = format!("tk_live_{}", "0".repeat(48));
    let (s1, b1) = app.get("/v1/me", &unknown).await;
    let (s2, b2) = app.get("/v1/me", "tk_nonsense").await;
    assert_error(s1, &b1, 401, "unauthorized");
    assert_error(s2, &b2, 401, "unauthorized");
    assert_eq!(b1["error"]["message"], b2["error"]["message"]);

    // Bad requests make nothing.
    let keys = app.count("api_keys");
    for body in [
        json!({}),
        json!({"name": ""}),
        json!({"name": "x", "daily_limit": "-1"}),
        json!({"name": "x", "daily_limit": 3}),
        json!({"name": "x", "expires_at": "yesterday"}),
        json!({"name": "x", "unknown": 1}),
    ] {
        let (s, b) = app.post("/v1/api-keys", &alice, body.clone()).await;
        assert_error(s, &b, 422, "validation_error");
    }
    assert_eq!(app.count("api_keys"), keys);
    app.assert_ledger_ok();
}

fn stored_hash(app: &TestApp, key_id: &str) -> String {
    use diesel::prelude::*;
    #[derive(QueryableByName)]
    struct H {
        #[diesel(sql_type = diesel::sql_types::Text)]
        h: String,
    }
    let conn: &mut tally::db::DbConn = &mut app.conn();
    diesel::sql_query(format!("SELECT secret_hash AS h FROM api_keys WHERE id = '{key_id}'"))
        .get_result::<H>(conn)
        .expect("key row")
        .h
}

async fn expired_keys_are_refused_whatever_the_balance(app: TestApp) {
    let (_, agent) = market(&app, "0.3", "1", 0, "public").await;
    let alice = app.token("alice");
    let wallet = app.wallet_of("alice").await;
    app.fund(&wallet, "20").await;
    let at = chrono::Utc::now() + chrono::Duration::seconds(2);
    let k = make_key(&app, &alice, json!({"name": "short", "expires_at": at.to_rfc3339()})).await;
    let sk = secret(&k);
    assert!(k["expires_at"].is_string(), "{k}");
    let (s, _, c) = charge(&app, &sk, &agent, json!({}), "e-1").await;
    assert_eq!(s, 201, "{c}");
    let wait = (at - chrono::Utc::now()).to_std().unwrap_or_default() + Duration::from_millis(300);
    tokio::time::sleep(wait).await;
    let (s, _, b) = charge(&app, &sk, &agent, json!({}), "e-2").await;
    assert_error(s, &b, 401, "api_key_expired");
    let (s, b) = app.get("/v1/me", &sk).await;
    assert_error(s, &b, 401, "api_key_expired");
    assert_eq!(app.balance(&wallet, &alice).await, "18.7");
    assert_eq!(app.count("charges"), 1);
    // A key cannot be made already expired.
    let past = (chrono::Utc::now() - chrono::Duration::seconds(1)).to_rfc3339();
    let (s, b) = app.post("/v1/api-keys", &alice, json!({"name": "late", "expires_at": past})).await;
    assert_error(s, &b, 422, "validation_error");
    assert_eq!(app.count("api_keys"), 1);
}

async fn a_key_limit_holds_under_64_concurrent_charges(app: TestApp) {
    let (_, agent) = market(&app, "0.3", "1", 0, "public").await;
    let alice = app.token("alice");
    let wallet = app.wallet_of("alice").await;
    app.fund(&wallet, "100").await;
    let k = make_key(&app, &alice, json!({"name": "capped", "daily_limit": "13"})).await; // ten messages
    let (key_id, sk) = (id(&k), secret(&k));
    let results = join_all((0..64).map(|i| {
        let (app, sk, agent) = (&app, &sk, &agent);
        async move { charge(app, sk, agent, json!({}), &format!("race-{i}")).await }
    }))
    .await;
    let ok = results.iter().filter(|(s, _, _)| *s == 201).count();
    let refused: Vec<_> = results.iter().filter(|(s, _, _)| *s == 429).collect();
    assert_eq!((ok, refused.len()), (10, 54), "{results:?}");
    for (s, headers, b) in refused {
        assert_error(*s, b, 429, "spend_limit_exceeded");
        assert_eq!(b["error"]["api_key_id"], key_id.as_str(), "the body names the key: {b}");
        assert!(b["error"]["message"].as_str().unwrap().contains(&key_id), "{b}");
        let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=86_400).contains(&retry), "{retry}");
    }
    let mut remaining: Vec<String> = results
        .iter()
        .filter(|(s, _, _)| *s == 201)
        .map(|(_, h, _)| h["x-key-daily-remaining"].to_str().unwrap().to_string())
        .collect();
    remaining.sort_by(|a, b| a.parse::<f64>().unwrap().total_cmp(&b.parse::<f64>().unwrap()));
    let expected: Vec<String> =
        ["0", "1.3", "2.6", "3.9", "5.2", "6.5", "7.8", "9.1", "10.4", "11.7"].map(String::from).to_vec();
    assert_eq!(remaining, expected, "each success saw its own remainder");
    assert_eq!(app.balance(&wallet, &alice).await, "87");
    assert_eq!(app.count("charges"), 10);
    let (_, k) = app.get(&format!("/v1/api-keys/{key_id}"), &alice).await;
    assert_eq!((k["spent_today"].as_str(), k["daily_remaining"].as_str()), (Some("13"), Some("0")));
    // A quote with the key says so; with a JWT the wallet may still pay.
    let (_, q) = app.post(&format!("/v1/agents/{agent}/quote"), &sk, json!({})).await;
    assert_eq!(
        (q["allowed"].as_bool(), q["reason"].as_str()),
        (Some(false), Some("spend_limit_exceeded")),
        "{q}"
    );
    let (_, q) = app.post(&format!("/v1/agents/{agent}/quote"), &alice, json!({})).await;
    assert_eq!(q["allowed"], true, "{q}");
    let (s, _, _) = charge(&app, &alice, &agent, json!({}), "jwt").await;
    assert_eq!(s, 201);
    app.assert_ledger_ok();
}

async fn holds_count_against_the_key_limit_like_charges(app: TestApp) {
    let (_, agent) = market(&app, "0.3", "1", 0, "public").await;
    let alice = app.token("alice");
    let wallet = app.wallet_of("alice").await;
    app.fund(&wallet, "100").await;
    let k = make_key(&app, &alice, json!({"name": "holds", "daily_limit": "5"})).await;
    let (key_id, sk) = (id(&k), secret(&k));
    let (s, h) = hold(&app, &sk, &agent, json!({"estimate": {"amount": "4"}}), "h-1").await;
    assert_eq!(s, 201, "{h}");
    assert_eq!(spent_today(&app, &alice, &key_id).await, "4");
    // 4 held + 1.3 would pass 5.
    let (s, _, b) = charge(&app, &sk, &agent, json!({}), "c-1").await;
    assert_error(s, &b, 429, "spend_limit_exceeded");
    assert_eq!(b["error"]["api_key_id"], key_id.as_str());
    let (s, h2) = hold(&app, &sk, &agent, json!({"estimate": {"amount": "1.5"}}), "h-2").await;
    assert_error(s, &h2, 429, "spend_limit_exceeded");
    // Released (here with a JWT): the key's day gets it back.
    let (s, r) = release(&app, &alice, h["id"].as_str().unwrap(), "r-1").await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(spent_today(&app, &alice, &key_id).await, "0");
    let (s, _, c) = charge(&app, &sk, &agent, json!({}), "c-2").await;
    assert_eq!(s, 201, "{c}");
    assert_eq!(spent_today(&app, &alice, &key_id).await, "1.3");
    // A hold captured below its amount counts what was paid.
    let (s, h) = hold(&app, &sk, &agent, json!({"estimate": {"amount": "3"}}), "h-3").await;
    assert_eq!(s, 201, "{h}");
    assert_eq!(spent_today(&app, &alice, &key_id).await, "4.3");
    let (s, headers, cap) = app
        .send(
            Method::POST,
            &format!("/v1/holds/{}/capture", id(&h)),
            Some(&sk),
            Some(json!({})),
            Some("cap-1"),
        )
        .await;
    assert_eq!(s, 201, "{cap}");
    assert_eq!(cap["total"], "1.3");
    assert_eq!(headers["x-key-daily-remaining"], "2.4");
    assert_eq!(spent_today(&app, &alice, &key_id).await, "2.6");
    assert_eq!(app.balance(&wallet, &alice).await, "97.4");
    // Holds made without the key count nothing against it.
    let (s, _) = hold(&app, &alice, &agent, json!({"estimate": {"amount": "50"}}), "h-jwt").await;
    assert_eq!(s, 201);
    assert_eq!(spent_today(&app, &alice, &key_id).await, "2.6");
    app.assert_ledger_ok();
}

async fn spent_today(app: &TestApp, token: &str, key_id: &str) -> String {
    let (_, k) = app.get(&format!("/v1/api-keys/{key_id}"), token).await;
    k["spent_today"].as_str().unwrap_or_else(|| panic!("spent_today in {k}")).to_string()
}

async fn an_org_key_pays_the_org_wallet_within_the_member_limit(app: TestApp) {
    let (_, agent) = market(&app, "0.3", "1", 0, "public").await;
    let owner = app.token("olivia");
    let (_, org) = app.post("/v1/orgs", &owner, json!({"name": "Buyer Co"})).await;
    let org_id = org["id"].as_str().unwrap().to_string();
    let org_wallet = org["wallet_id"].as_str().unwrap().to_string();
    app.fund(&org_wallet, "100").await;
    // Mia administers it with a member limit of three messages a day.
    let (s, m) = app
        .post(
            &format!("/v1/orgs/{org_id}/members"),
            &owner,
            json!({"user_id": "mia", "role": "admin", "daily_limit": "3.9"}),
        )
        .await;
    assert_eq!(s, 201, "{m}");
    let (s, _) = app.post(&format!("/v1/orgs/{org_id}/members"), &owner, json!({"user_id": "max"})).await;
    assert_eq!(s, 201);
    let mia = app.token("mia");
    let mia_wallet = app.wallet_of("mia").await;
    app.fund(&mia_wallet, "50").await;
    let k = make_key(&app, &mia, json!({"name": "team bot", "org_id": org_id})).await;
    assert_eq!(
        (k["org_id"].as_str(), k["wallet_id"].as_str()),
        (Some(org_id.as_str()), Some(org_wallet.as_str()))
    );
    let sk = secret(&k);
    for i in 0..3 {
        let (s, _, c) = charge(&app, &sk, &agent, json!({}), &format!("org-{i}")).await;
        assert_eq!(s, 201, "{c}");
        assert_eq!(
            (c["wallet_id"].as_str(), c["org_id"].as_str()),
            (Some(org_wallet.as_str()), Some(org_id.as_str()))
        );
        assert_eq!(c["user_id"], "mia");
    }
    // The member limit of the key's maker still applies.
    let (s, _, b) = charge(&app, &sk, &agent, json!({"org_id": org_id}), "org-3").await;
    assert_error(s, &b, 429, "spend_limit_exceeded");
    assert!(b["error"].get("api_key_id").is_none(), "the member limit, not the key's: {b}");
    assert_eq!(app.balance(&org_wallet, &owner).await, "96.1");
    assert_eq!(app.balance(&mia_wallet, &mia).await, "50");
    // The key pays from its wallet only.
    let (s, _, b) = charge(&app, &sk, &agent, json!({"org_id": "org_other"}), "org-4").await;
    assert_error(s, &b, 403, "api_key_not_allowed");
    let (s, b) = app.get(&format!("/v1/wallets/{mia_wallet}"), &sk).await;
    assert_error(s, &b, 403, "api_key_not_allowed");
    let (s, w) = app.get(&format!("/v1/wallets/{org_wallet}"), &sk).await;
    assert_eq!((s.as_u16(), w["balance"].as_str()), (200, Some("96.1")), "{w}");
    // A personal key of mia's cannot pay from the org wallet.
    let personal = secret(&make_key(&app, &mia, json!({"name": "mine"})).await);
    let (s, _, b) = charge(&app, &personal, &agent, json!({"org_id": org_id}), "p-1").await;
    assert_error(s, &b, 403, "api_key_not_allowed");
    // A plain member may not make an org key; an outsider does not see the org.
    let (s, b) = app.post("/v1/api-keys", &app.token("max"), json!({"name": "x", "org_id": org_id})).await;
    assert_error(s, &b, 403, "forbidden");
    let (s, b) = app.post("/v1/api-keys", &app.token("nina"), json!({"name": "x", "org_id": org_id})).await;
    assert_error(s, &b, 404, "not_found");
    // The owner sees and may revoke the org's key; the plain member does not see it.
    let (_, list) = app.get("/v1/api-keys", &owner).await;
    assert_eq!(list["data"].as_array().unwrap().iter().map(id).collect::<Vec<_>>(), vec![id(&k)]);
    let (_, list) = app.get("/v1/api-keys", &app.token("max")).await;
    assert_eq!(list["data"], json!([]));
    let (s, _, r) =
        app.send(Method::DELETE, &format!("/v1/api-keys/{}", id(&k)), Some(&owner), None, None).await;
    assert_eq!(s, 200, "{r}");
    let (s, b) = app.get("/v1/me", &sk).await;
    assert_error(s, &b, 401, "api_key_revoked");
    app.assert_ledger_ok();
}

async fn keys_are_refused_where_they_are_not_allowed(app: TestApp) {
    let alice = app.token("alice");
    let k = make_key(&app, &alice, json!({"name": "narrow"})).await;
    let sk = secret(&k);
    let orgs = app.count("orgs");
    let (s, b) = app.post("/v1/orgs", &sk, json!({"name": "Key Co"})).await;
    assert_error(s, &b, 403, "api_key_not_allowed");
    assert_eq!(app.count("orgs"), orgs);
    for path in ["/v1/api-keys", "/v1/admin/top-ups", "/v1/me/entitlements"] {
        let (s, b) = app.get(path, &sk).await;
        assert_error(s, &b, 403, "api_key_not_allowed");
    }
    let (s, b) = app.post("/v1/api-keys", &sk, json!({"name": "child"})).await;
    assert_error(s, &b, 403, "api_key_not_allowed");
    assert_eq!(app.count("api_keys"), 1);
    // An operator's key is no operator.
    let ops = app.operator_token();
    let op_key = secret(&make_key(&app, &ops, json!({"name": "ops"})).await);
    let (s, b) = app.get("/v1/admin/ledger/verify", &op_key).await;
    assert_error(s, &b, 403, "api_key_not_allowed");
    // Allowed: the price lists and the marketplace.
    for path in ["/v1/tools", "/v1/models", "/v1/marketplace/agents"] {
        let (s, b) = app.get(path, &sk).await;
        assert_eq!(s, 200, "{path}: {b}");
    }
    // A revoked key is 401 everywhere, allowed or not.
    app.send(Method::DELETE, &format!("/v1/api-keys/{}", id(&k)), Some(&alice), None, None).await;
    let (s, b) = app.post("/v1/orgs", &sk, json!({"name": "Key Co"})).await;
    assert_error(s, &b, 401, "api_key_revoked");
}

async fn another_persons_key_is_not_found(app: TestApp) {
    let alice = app.token("alice");
    let bob = app.token("bob");
    let k = make_key(&app, &alice, json!({"name": "alice's", "daily_limit": "1"})).await;
    let (key_id, sk) = (id(&k), secret(&k));
    let (s, b) = app.get(&format!("/v1/api-keys/{key_id}"), &bob).await;
    assert_error(s, &b, 404, "not_found");
    let (s, b) = app
        .patch(&format!("/v1/api-keys/{key_id}"), &bob, json!({"name": "mine now", "daily_limit": null}))
        .await;
    assert_error(s, &b, 404, "not_found");
    let (s, _, b) = app.send(Method::DELETE, &format!("/v1/api-keys/{key_id}"), Some(&bob), None, None).await;
    assert_error(s, &b, 404, "not_found");
    let (s, _, b) = app.send(Method::DELETE, "/v1/api-keys/ak_nope", Some(&bob), None, None).await;
    assert_error(s, &b, 404, "not_found");
    // Nothing changed.
    let (_, k) = app.get(&format!("/v1/api-keys/{key_id}"), &alice).await;
    assert_eq!((k["name"].as_str(), k["daily_limit"].as_str()), (Some("alice's"), Some("1")));
    assert!(k["revoked_at"].is_null());
    let (s, _) = app.get("/v1/me", &sk).await;
    assert_eq!(s, 200);
    // Nor is bob's list cursor allowed to name it.
    let (s, b) = app.get(&format!("/v1/api-keys?starting_after={key_id}"), &bob).await;
    assert_error(s, &b, 422, "validation_error");
}

/// The server's own log never holds a key's secret; its access log names
/// the key's id. The real binary, its stderr kept, at debug level.
async fn key_never_logged(backend: Backend) {
    let Some((url, _dir, cleanup)) = fresh_database(backend) else {
        eprintln!("TEST_POSTGRES_URL is not set: PostgreSQL run skipped");
        return;
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let log_dir = tempfile::tempdir().unwrap();
    let log_path = log_dir.path().join("server.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_tally"))
        .arg("serve")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", &url)
        .env("TALLY_JWT_SECRET", SECRET)
        .env("TALLY_BIND", format!("127.0.0.1:{port}"))
        .env("TALLY_WORKERS", "2")
        .env("TALLY_API_KEY_MODE", "test")
        .env("RUST_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .expect("tally serve starts");
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let started = Instant::now();
    while client.get(format!("{base}/readyz")).send().await.map(|r| r.status() != 200).unwrap_or(true) {
        assert!(started.elapsed() < Duration::from_secs(30), "server did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let alice = crate::helpers::mint("alice", &[], SECRET, None, None, 3600);
    let made: Value = client
        .post(format!("{base}/v1/api-keys"))
        .bearer_auth(&alice)
        .json(&json!({"name": "logged?"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let (key_id, sk) = (id(&made), secret(&made));
    assert!(sk.starts_with("tk_test_"), "{sk}");
    let get =
        |path: &str, token: &str| client.get(format!("{base}{path}")).bearer_auth(token.to_string()).send();
    assert_eq!(get("/v1/me", &sk).await.unwrap().status(), StatusCode::OK);
    assert_eq!(get("/v1/api-keys", &sk).await.unwrap().status(), StatusCode::FORBIDDEN);
    // The same key but its last character (which must change: a key may end in 0).
    let last = if sk.ends_with('0') { '1' } else { '0' };
    let wrong = format!("{}{last}", &sk[..sk.len() - 1]);
    assert_eq!(get("/v1/me", &wrong).await.unwrap().status(), StatusCode::UNAUTHORIZED);
    client.delete(format!("{base}/v1/api-keys/{key_id}")).bearer_auth(&alice).send().await.unwrap();
    assert_eq!(get("/v1/me", &sk).await.unwrap().status(), StatusCode::UNAUTHORIZED);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = child.kill();
    let _ = child.wait();
    let log = std::fs::read_to_string(&log_path).unwrap();
    let random = &sk["tk_test_".len()..];
    assert!(!log.contains(random), "the secret is in the log:\n{log}");
    assert!(!log.contains(&random[..24]), "part of the secret is in the log");
    assert!(!log.contains(&wrong["tk_test_".len()..]), "a refused secret is in the log");
    assert!(
        log.lines().any(|l| l.contains("served") && l.contains(&key_id) && l.contains("/v1/me")),
        "the access log names the key's id:\n{log}"
    );
    if let Some((admin, name)) = cleanup {
        use diesel::connection::SimpleConnection;
        use diesel::Connection;
        if let Ok(mut c) = diesel::PgConnection::establish(&admin) {
            let _ = c.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_is_never_logged_on_sqlite() {
    key_never_logged(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_is_never_logged_on_postgres() {
    key_never_logged(Backend::Postgres).await;
}
