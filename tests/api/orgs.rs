//! Organizations: creation, members, roles, the last owner.

use reqwest::Method;
use serde_json::json;

use crate::both;
use crate::helpers::{assert_error, TestApp};

both!(create_an_org_with_its_wallet, manage_members_and_roles);

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
