//! Who may do what: tokens, and the authorization matrix of SPEC 3 and 11.

use base64::Engine;
use reqwest::Method;
use serde_json::json;

use crate::both;
use crate::helpers::{assert_error, mint, Backend, TestApp, SECRET};

both!(anonymous_is_401, others_wallets_and_orgs_are_404, members_cannot_manage, only_operators_reach_admin);

const PROTECTED: &[(&str, &str)] = &[
    ("GET", "/v1/me"),
    ("GET", "/v1/wallets/wal_x"),
    ("PATCH", "/v1/wallets/wal_x"),
    ("GET", "/v1/wallets/wal_x/transactions"),
    ("GET", "/v1/wallets/wal_x/transactions/export"),
    ("POST", "/v1/orgs"),
    ("GET", "/v1/orgs/org_x"),
    ("GET", "/v1/orgs/org_x/members"),
    ("POST", "/v1/orgs/org_x/members"),
    ("PATCH", "/v1/orgs/org_x/members/u"),
    ("DELETE", "/v1/orgs/org_x/members/u"),
    ("POST", "/v1/admin/wallets/wal_x/adjustments"),
    ("POST", "/v1/admin/wallets/wal_x/freeze"),
    ("POST", "/v1/admin/wallets/wal_x/unfreeze"),
    ("GET", "/v1/admin/ledger/verify"),
];

async fn anonymous_is_401(app: TestApp) {
    for (method, path) in PROTECTED {
        let m = Method::from_bytes(method.as_bytes()).unwrap();
        let (status, _, body) = app.send(m, path, None, Some(json!({})), None).await;
        assert_error(status, &body, 401, "unauthorized");
    }
    let (status, _, body) = app.send(Method::GET, "/v1/me", Some("not-a-jwt"), None, None).await;
    assert_error(status, &body, 401, "unauthorized");
    assert_eq!(app.count("people"), 0);
}

async fn others_wallets_and_orgs_are_404(app: TestApp) {
    let alice = app.token("alice");
    let mallory = app.token("mallory");
    let wallet = app.wallet_of("alice").await;
    app.fund(&wallet, "5").await;
    let (_, org) = app.post("/v1/orgs", &alice, json!({"name": "Alice Co"})).await;
    let org_id = org["id"].as_str().unwrap();
    let org_wallet = org["wallet_id"].as_str().unwrap();
    for path in [
        format!("/v1/wallets/{wallet}"),
        format!("/v1/wallets/{wallet}/transactions"),
        format!("/v1/wallets/{wallet}/transactions/export"),
        format!("/v1/wallets/{org_wallet}"),
        format!("/v1/wallets/{org_wallet}/transactions"),
        format!("/v1/orgs/{org_id}"),
        format!("/v1/orgs/{org_id}/members"),
    ] {
        let (status, body) = app.get(&path, &mallory).await;
        assert_error(status, &body, 404, "not_found");
        // Indistinguishable from something that does not exist.
        let (status2, body2) =
            app.get(&path.replace("wal_", "wal_0").replace("org_", "org_0"), &mallory).await;
        assert_eq!((status2, &body2["error"]["type"]), (status, &body["error"]["type"]));
    }
    let (status, body) =
        app.patch(&format!("/v1/wallets/{wallet}"), &mallory, json!({"daily_limit": "1"})).await;
    assert_error(status, &body, 404, "not_found");
    let (status, body) =
        app.post(&format!("/v1/orgs/{org_id}/members"), &mallory, json!({"user_id": "mallory"})).await;
    assert_error(status, &body, 404, "not_found");
    // Nothing changed for alice.
    let (_, w) = app.get(&format!("/v1/wallets/{wallet}"), &alice).await;
    assert_eq!((w["balance"].as_str(), w["daily_limit"].is_null()), (Some("5"), true));
    let (_, members) = app.get(&format!("/v1/orgs/{org_id}/members"), &alice).await;
    assert_eq!(members["data"].as_array().unwrap().len(), 1);
    app.assert_ledger_ok();
}

async fn members_cannot_manage(app: TestApp) {
    let alice = app.token("alice");
    let (_, org) = app.post("/v1/orgs", &alice, json!({"name": "Alice Co"})).await;
    let org_id = org["id"].as_str().unwrap().to_string();
    let org_wallet = org["wallet_id"].as_str().unwrap().to_string();
    let (s, _) = app.post(&format!("/v1/orgs/{org_id}/members"), &alice, json!({"user_id": "bob"})).await;
    assert_eq!(s, 201);
    let bob = app.token("bob");
    // A member can read...
    let (s, o) = app.get(&format!("/v1/orgs/{org_id}"), &bob).await;
    assert_eq!((s.as_u16(), o["role"].as_str()), (200, Some("member")));
    let (s, _) = app.get(&format!("/v1/wallets/{org_wallet}"), &bob).await;
    assert_eq!(s, 200);
    // ...but not manage members or the wallet.
    let (s, b) = app.post(&format!("/v1/orgs/{org_id}/members"), &bob, json!({"user_id": "carol"})).await;
    assert_error(s, &b, 403, "forbidden");
    let (s, b) =
        app.patch(&format!("/v1/orgs/{org_id}/members/alice"), &bob, json!({"role": "member"})).await;
    assert_error(s, &b, 403, "forbidden");
    let (s, _, b) =
        app.send(Method::DELETE, &format!("/v1/orgs/{org_id}/members/alice"), Some(&bob), None, None).await;
    assert_error(s, &b, 403, "forbidden");
    let (s, b) = app.patch(&format!("/v1/wallets/{org_wallet}"), &bob, json!({"daily_limit": "1"})).await;
    assert_error(s, &b, 403, "forbidden");
    let (s, b) = app.get(&format!("/v1/wallets/{org_wallet}/transactions/export"), &bob).await;
    assert_error(s, &b, 403, "forbidden");
    let (_, members) = app.get(&format!("/v1/orgs/{org_id}/members"), &alice).await;
    assert_eq!(members["data"].as_array().unwrap().len(), 2);
}

async fn only_operators_reach_admin(app: TestApp) {
    let wallet = app.wallet_of("alice").await;
    for token in [app.token("alice"), app.token_with("svc", &["service"])] {
        for (method, path) in [
            ("POST", format!("/v1/admin/wallets/{wallet}/adjustments")),
            ("POST", format!("/v1/admin/wallets/{wallet}/freeze")),
            ("POST", format!("/v1/admin/wallets/{wallet}/unfreeze")),
            ("GET", "/v1/admin/ledger/verify".to_string()),
        ] {
            let m = Method::from_bytes(method.as_bytes()).unwrap();
            let (s, _, b) = app
                .send(m, &path, Some(&token), Some(json!({"amount": "5", "reason": "x"})), Some("k"))
                .await;
            assert_error(s, &b, 403, "forbidden");
        }
    }
    assert_eq!(app.count("journal_entries"), 0);
    let (_, w) = app.get(&format!("/v1/wallets/{wallet}"), &app.token("alice")).await;
    assert_eq!(w["frozen"], false);
    let (s, report) = app.get("/v1/admin/ledger/verify", &app.operator_token()).await;
    assert_eq!(s, 200);
    assert_eq!(report["ok"], true);
}

/// Tokens: signature, algorithm, expiry, issuer and audience.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_401() {
    let app = TestApp::spawn_with(Backend::Sqlite, |v| {
        v.insert("TALLY_JWT_ISSUER".into(), "https://id.example".into());
        v.insert("TALLY_JWT_AUDIENCE".into(), "tally".into());
    })
    .await
    .unwrap();
    let iss = Some("https://id.example");
    let aud = Some("tally");
    let good = mint("alice", &[], SECRET, iss, aud, 300);
    let (s, _, _) = app.send(Method::GET, "/v1/me", Some(&good), None, None).await;
    assert_eq!(s, 200);

    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let now = chrono::Utc::now().timestamp();
    let claims = format!(r#"{{"sub":"alice","exp":{},"iss":"https://id.example","aud":"tally"}}"#, now + 300);
    let alg_none = format!("{}.{}.", b64(r#"{"alg":"none","typ":"JWT"}"#), b64(&claims));
    let hs512 = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS512),
        &serde_json::from_str::<serde_json::Value>(&claims).unwrap(),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let mut tampered = good.clone();
    tampered.pop();
    tampered.push(if good.ends_with('A') { 'B' } else { 'A' });
    let cases = [
        ("alg none", alg_none),
        ("unexpected algorithm", hs512),
        ("wrong signature", mint("alice", &[], "some-other-secret-entirely", iss, aud, 300)),
        ("tampered signature", tampered),
        ("wrong issuer", mint("alice", &[], SECRET, Some("https://evil.example"), aud, 300)),
        ("no issuer", mint("alice", &[], SECRET, None, aud, 300)),
        ("wrong audience", mint("alice", &[], SECRET, iss, Some("other"), 300)),
        ("expired beyond leeway", mint("alice", &[], SECRET, iss, aud, -31)),
        ("no exp", {
            let c = json!({"sub": "alice", "iss": "https://id.example", "aud": "tally"});
            jsonwebtoken::encode(
                &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
                &c,
                &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
            )
            .unwrap()
        }),
    ];
    for (what, token) in cases {
        let (s, _, body) = app.send(Method::GET, "/v1/me", Some(&token), None, None).await;
        assert_eq!(s, 401, "{what} must be refused: {body}");
        assert_eq!(body["error"]["type"], "unauthorized", "{what}");
    }
    // Only alice (from the good token) was ever provisioned.
    assert_eq!(app.count("people"), 1);
}
