//! Browsers: CORS for the origins listed in `TALLY_CORS_ORIGINS`, none by default.

use reqwest::{Method, StatusCode};

use crate::helpers::{Backend, TestApp};

const APP_ORIGIN: &str = "https://app.example.com";

async fn cors_app() -> TestApp {
    TestApp::spawn_with(Backend::Sqlite, |v| {
        v.insert("TALLY_CORS_ORIGINS".into(), format!("{APP_ORIGIN}, http://localhost:3000"));
    })
    .await
    .unwrap()
}

/// A browser's preflight before a money-moving POST from `origin`.
async fn preflight(app: &TestApp, origin: &str) -> reqwest::Response {
    app.client
        .request(Method::OPTIONS, format!("{}/v1/admin/wallets/wal_x/adjustments", app.address))
        .header("Origin", origin)
        .header("Access-Control-Request-Method", "POST")
        .header("Access-Control-Request-Headers", "authorization, content-type, idempotency-key")
        .send()
        .await
        .unwrap()
}

fn header(res: &reqwest::Response, name: &str) -> Option<String> {
    res.headers().get(name).map(|v| v.to_str().unwrap().to_ascii_lowercase())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listed_origin_passes_the_preflight() {
    let app = cors_app().await;
    let res = preflight(&app, APP_ORIGIN).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(header(&res, "access-control-allow-origin").as_deref(), Some(APP_ORIGIN));
    let methods = header(&res, "access-control-allow-methods").unwrap();
    for m in ["get", "post", "patch", "put", "delete"] {
        assert!(methods.contains(m), "{m} missing from {methods}");
    }
    let headers = header(&res, "access-control-allow-headers").unwrap();
    for h in ["authorization", "content-type", "idempotency-key"] {
        assert!(headers.contains(h), "{h} missing from {headers}");
    }
    assert_eq!(header(&res, "access-control-max-age").as_deref(), Some("3600"));
    assert!(header(&res, "access-control-allow-credentials").is_none(), "bearer tokens, not cookies");
    assert!(res.headers().contains_key("x-request-id"));
    // The second listed origin too, exactly as a browser sends it.
    let res = preflight(&app, "http://localhost:3000").await;
    assert_eq!(header(&res, "access-control-allow-origin").as_deref(), Some("http://localhost:3000"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listed_origin_reads_the_response_and_its_headers() {
    let app = cors_app().await;
    let res = app
        .client
        .get(format!("{}/v1/me", app.address))
        .bearer_auth(app.token("alice"))
        .header("Origin", APP_ORIGIN)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(header(&res, "access-control-allow-origin").as_deref(), Some(APP_ORIGIN));
    let exposed = header(&res, "access-control-expose-headers").unwrap();
    for h in ["x-request-id", "idempotent-replayed", "retry-after", "x-balance-remaining", "x-request-cost"] {
        assert!(exposed.contains(h), "{h} missing from {exposed}");
    }
    assert!(header(&res, "vary").unwrap().contains("origin"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_origin_is_refused_and_changes_nothing() {
    let app = cors_app().await;
    let res = preflight(&app, "https://evil.example.com").await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert!(header(&res, "access-control-allow-origin").is_none());
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["error"]["type"], "invalid_request", "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("CORS"), "{body}");
    // A preflight asking for a method the API does not take.
    let res = app
        .client
        .request(Method::OPTIONS, format!("{}/v1/me", app.address))
        .header("Origin", APP_ORIGIN)
        .header("Access-Control-Request-Method", "TRACE")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    // A simple request from it is served (a browser hides the answer).
    let res = app
        .client
        .get(format!("{}/healthz", app.address))
        .header("Origin", "https://evil.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(header(&res, "access-control-allow-origin").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_origin_is_allowed_by_default() {
    let app = TestApp::spawn(Backend::Sqlite).await.unwrap();
    let res = preflight(&app, APP_ORIGIN).await;
    assert!(header(&res, "access-control-allow-origin").is_none());
    assert!(res.status().is_client_error(), "{}", res.status());
    let res = app.client.get(format!("{}/healthz", app.address)).header("Origin", APP_ORIGIN).send().await;
    let res = res.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(header(&res, "access-control-allow-origin").is_none());
}

#[test]
fn origins_must_be_scheme_and_host() {
    use std::collections::BTreeMap;
    let with = |origins: &str| {
        let values = BTreeMap::from([("TALLY_CORS_ORIGINS".to_string(), origins.to_string())]);
        tally::config::Settings::from_values(&values)
    };
    let s = with(" https://App.Example.com ,http://localhost:3000,").unwrap();
    assert_eq!(s.cors_origins, ["https://app.example.com", "http://localhost:3000"]);
    assert!(with("").unwrap().cors_origins.is_empty());
    for bad in
        ["*", "app.example.com", "https://app.example.com/", "https://a.com/path", "ftp://a.com", "https://"]
    {
        let err = with(bad).unwrap_err().to_string();
        assert!(err.contains("TALLY_CORS_ORIGINS") && err.contains(bad.trim()), "{bad}: {err}");
    }
}
