//! Organizations: creation, members, roles, the last owner.

use reqwest::Method;
use serde_json::json;

use crate::both;
use crate::helpers::{assert_error, TestApp};

both!(
    create_an_org_with_its_wallet,
    manage_members_and_roles,
    two_owners_demoting_each_other_leave_one_owner,
    two_owners_removing_each_other_leave_one_owner,
    two_owners_demoting_themselves_leave_one_owner
);

async fn create_an_org_with_its_wallet(app: TestApp) {
    let alice = app.token("alice");
    let (s, org) = app.post("/v1/orgs", &alice, json!({"name": "  Alice Co  "})).await;
    assert_eq!(s, 201, "{org}");
    let org_id = org["id"].as_str().unwrap();
    assert!(org_id.starts_with("org_"));
    assert_eq!(org["name"], "Alice Co");
    assert_eq!(org["plan"], "free");
    assert_eq!(org["role"], "owner");
    let wallet = org["wallet_id"].as_str().unwrap();
    assert!(wallet.starts_with("wal_"));
    let (s, w) = app.get(&format!("/v1/wallets/{wallet}"), &alice).await;
    assert_eq!(s, 200);
    assert_eq!(
        (w["owner_type"].as_str(), w["owner_id"].as_str(), w["balance"].as_str()),
        (Some("org"), Some(org_id), Some("0"))
    );
    let (_, me) = app.get("/v1/me", &alice).await;
    assert_eq!(me["orgs"], json!([{"id": org_id, "name": "Alice Co", "role": "owner", "wallet_id": wallet}]));
    assert_ne!(me["wallet_id"], wallet, "the personal wallet is another wallet");
    let (s, got) = app.get(&format!("/v1/orgs/{org_id}"), &alice).await;
    assert_eq!((s.as_u16(), &got["wallet_id"]), (200, &org["wallet_id"]));
}

async fn manage_members_and_roles(app: TestApp) {
    let alice = app.token("alice");
    let (_, org) = app.post("/v1/orgs", &alice, json!({"name": "Co"})).await;
    let org = org["id"].as_str().unwrap().to_string();
    let members = format!("/v1/orgs/{org}/members");

    let (s, m) =
        app.post(&members, &alice, json!({"user_id": "bob", "role": "admin", "daily_limit": "12.5"})).await;
    assert_eq!(s, 201, "{m}");
    assert_eq!(
        (m["user_id"].as_str(), m["role"].as_str(), m["daily_limit"].as_str()),
        (Some("bob"), Some("admin"), Some("12.5"))
    );
    let (s, m) = app.post(&members, &alice, json!({"user_id": "carol"})).await;
    assert_eq!((s.as_u16(), m["role"].as_str(), m["daily_limit"].is_null()), (201, Some("member"), true));
    let (s, b) = app.post(&members, &alice, json!({"user_id": "carol"})).await;
    assert_error(s, &b, 409, "already_member");
    let (s, b) = app.post(&members, &alice, json!({"user_id": "dave", "role": "boss"})).await;
    assert_error(s, &b, 422, "validation_error");

    // An admin manages members but cannot create or touch owners.
    let bob = app.token("bob");
    let (s, b) = app.post(&members, &bob, json!({"user_id": "erin", "role": "owner"})).await;
    assert_error(s, &b, 403, "forbidden");
    let (s, b) = app.patch(&format!("{members}/alice"), &bob, json!({"role": "member"})).await;
    assert_error(s, &b, 403, "forbidden");
    let (s, m) = app.patch(&format!("{members}/carol"), &bob, json!({"daily_limit": "3"})).await;
    assert_eq!((s.as_u16(), m["daily_limit"].as_str(), m["role"].as_str()), (200, Some("3"), Some("member")));
    let (s, m) = app.patch(&format!("{members}/carol"), &bob, json!({"daily_limit": null})).await;
    assert_eq!((s.as_u16(), m["daily_limit"].is_null()), (200, true));
    let (s, m) = app.patch(&format!("{members}/carol"), &bob, json!({"role": "admin"})).await;
    assert_eq!((s.as_u16(), m["role"].as_str()), (200, Some("admin")));
    let (s, b) = app.patch(&format!("{members}/nobody"), &bob, json!({"role": "admin"})).await;
    assert_error(s, &b, 404, "not_found");

    // The last owner stays.
    let (s, b) = app.patch(&format!("{members}/alice"), &alice, json!({"role": "admin"})).await;
    assert_error(s, &b, 409, "last_owner");
    let (s, _, b) = app.send(Method::DELETE, &format!("{members}/alice"), Some(&alice), None, None).await;
    assert_error(s, &b, 409, "last_owner");
    let (s, _) = app.patch(&format!("{members}/bob"), &alice, json!({"role": "owner"})).await;
    assert_eq!(s, 200);
    let (s, _, _) = app.send(Method::DELETE, &format!("{members}/alice"), Some(&bob), None, None).await;
    assert_eq!(s, 204);
    // alice is no longer a member: the org is now invisible to her.
    let (s, b) = app.get(&format!("/v1/orgs/{org}"), &alice).await;
    assert_error(s, &b, 404, "not_found");
    let (_, list) = app.get(&members, &bob).await;
    let ids: Vec<&str> =
        list["data"].as_array().unwrap().iter().map(|m| m["user_id"].as_str().unwrap()).collect();
    assert_eq!(ids, vec!["bob", "carol"]);
}

/// A new org of alice with bob as a second owner; its id.
async fn org_with_two_owners(app: &TestApp, round: usize) -> String {
    let alice = app.token("alice");
    let (s, org) = app.post("/v1/orgs", &alice, json!({"name": format!("Race {round}")})).await;
    assert_eq!(s, 201, "{org}");
    let org = org["id"].as_str().unwrap().to_string();
    let (s, m) = app
        .post(&format!("/v1/orgs/{org}/members"), &alice, json!({"user_id": "bob", "role": "owner"}))
        .await;
    assert_eq!(s, 201, "{m}");
    org
}

/// The org's members and their roles, read from the database.
fn roles_of(app: &TestApp, org: &str) -> Vec<(String, String)> {
    use diesel::prelude::*;
    use tally::db::schema::org_members;
    let conn: &mut tally::db::DbConn = &mut app.conn();
    org_members::table
        .filter(org_members::org_id.eq(org))
        .order(org_members::user_id.asc())
        .select((org_members::user_id, org_members::role))
        .load(conn)
        .unwrap()
}

/// Twenty rounds of two requests at once by alice and bob, both owners of
/// one org; `request(app, org, actor, other)` is what each sends. Exactly
/// one wins, the other gets `loser` (a 4xx), and one owner remains.
async fn owner_race(app: &TestApp, request: Method, target_other: bool, body: Option<serde_json::Value>) {
    for round in 0..20 {
        let org = org_with_two_owners(app, round).await;
        let send = |actor: &'static str, other: &'static str| {
            let target = if target_other { other } else { actor };
            let path = format!("/v1/orgs/{org}/members/{target}");
            let token = app.token(actor);
            let (method, body) = (request.clone(), body.clone());
            async move { app.send(method, &path, Some(&token), body, None).await }
        };
        let (a, b) = tokio::join!(send("alice", "bob"), send("bob", "alice"));
        let statuses = [a.0.as_u16(), b.0.as_u16()];
        let wins = statuses.iter().filter(|s| **s < 300).count();
        assert_eq!(wins, 1, "round {round}: exactly one change wins: {a:?} {b:?}");
        let loser = if a.0.as_u16() < 300 { &b } else { &a };
        assert!(
            [403, 404, 409].contains(&loser.0.as_u16()) && loser.2["error"]["type"].is_string(),
            "round {round}: the other is refused: {loser:?}"
        );
        let roles = roles_of(app, &org);
        let owners = roles.iter().filter(|(_, r)| r == "owner").count();
        assert_eq!(owners, 1, "round {round}: one owner remains: {roles:?}");
    }
    app.assert_ledger_ok();
}

async fn two_owners_demoting_each_other_leave_one_owner(app: TestApp) {
    owner_race(&app, Method::PATCH, true, Some(json!({"role": "admin"}))).await;
}

async fn two_owners_removing_each_other_leave_one_owner(app: TestApp) {
    owner_race(&app, Method::DELETE, true, None).await;
}

async fn two_owners_demoting_themselves_leave_one_owner(app: TestApp) {
    owner_race(&app, Method::PATCH, false, Some(json!({"role": "member"}))).await;
}
