//! Webhook endpoints: registration and its SSRF checks, access, rotation,
//! and the deliveries an event fans out to.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use reqwest::Method;
use serde_json::{json, Value};

use crate::both;
use crate::helpers::{assert_error, Backend, TestApp};

both!(endpoint_urls_must_be_public_https, endpoints_belong_to_their_owner);

/// Runs each named test on both databases with private receivers allowed
/// (`TALLY_WEBHOOKS_ALLOW_PRIVATE=true`) and a fast retry schedule.
#[macro_export]
macro_rules! both_private {
    ($($name:ident),* $(,)?) => { $(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                let app = $crate::webhook_endpoints::spawn_private($crate::helpers::Backend::Sqlite).await;
                super::$name(app.expect("sqlite app")).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() {
                match $crate::webhook_endpoints::spawn_private($crate::helpers::Backend::Postgres).await {
                    Some(app) => super::$name(app).await,
                    None => eprintln!("TEST_POSTGRES_URL is not set: PostgreSQL run skipped"),
                }
            }
        }
    )* };
}

pub async fn spawn_private(backend: Backend) -> Option<TestApp> {
    TestApp::spawn_with(backend, |v| {
        v.insert("TALLY_WEBHOOKS_ALLOW_PRIVATE".into(), "true".into());
        v.insert("TALLY_WEBHOOK_RETRY_BASE".into(), "10ms".into());
        v.insert("TALLY_WEBHOOK_POLL".into(), "50ms".into());
    })
    .await
}

both_private!(
    events_fan_out_to_the_endpoints_that_listen,
    a_failing_receiver_gets_the_same_webhook_id_with_backoff,
    three_instances_deliver_each_event_once,
    an_endpoint_failing_for_three_days_is_disabled_and_announced_once,
);

async fn endpoint_urls_must_be_public_https(app: TestApp) {
    let ann = app.token("ann");
    let refused = [
        ("http://hooks.example.com/h", "must use https"),
        ("https://127.0.0.1/h", "loopback"),
        ("https://localhost:8443/h", "loopback"),
        ("https://10.1.2.3/h", "private"),
        ("https://169.254.169.254/latest/meta-data", "metadata"),
        ("https://[::1]/h", "loopback"),
        ("https://[::ffff:192.168.0.1]/h", "private"),
        ("https://user:pw@hooks.example.com/h", "user name or password"),
    ];
    for (url, why) in refused {
        let (s, b) = app.post("/v1/webhook-endpoints", &ann, json!({"url": url, "events": ["*"]})).await;
        assert_error(s, &b, 422, "webhook_url_not_allowed");
        let message = b["error"]["message"].as_str().unwrap();
        assert!(message.contains(why), "{url}: {message}");
    }
    let (s, b) =
        app.post("/v1/webhook-endpoints", &ann, json!({"url": "ftp://x.example/h", "events": ["*"]})).await;
    assert_error(s, &b, 422, "webhook_url_not_allowed");
    assert_eq!(app.count("webhook_endpoints"), 0);
    // A public address is accepted (an IP literal: no DNS needed here).
    let (s, b) = app
        .post("/v1/webhook-endpoints", &ann, json!({"url": "https://93.184.216.34/h", "events": ["*"]}))
        .await;
    assert_eq!(s, 201, "{b}");
    // A PATCH to a private URL is refused and changes nothing.
    let id = b["id"].as_str().unwrap();
    let (s, e) =
        app.patch(&format!("/v1/webhook-endpoints/{id}"), &ann, json!({"url": "https://10.0.0.1/"})).await;
    assert_error(s, &e, 422, "webhook_url_not_allowed");
    let (_, e) = app.get(&format!("/v1/webhook-endpoints/{id}"), &ann).await;
    assert_eq!(e["url"], "https://93.184.216.34/h");
}

async fn endpoints_belong_to_their_owner(app: TestApp) {
    let ann = app.token("ann");
    let bob = app.token("bob");
    let url = "https://93.184.216.34/hooks";
    let (s, created) = app
        .post(
            "/v1/webhook-endpoints",
            &ann,
            json!({"url": url, "events": ["top_up.paid", "wallet.low_balance", "top_up.paid"], "description": "mine"}),
        )
        .await;
    assert_eq!(s, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("we_"));
    let secret = created["secret"].as_str().unwrap().to_string();
    assert!(secret.starts_with("whsec_") && secret.len() > 40, "{secret}");
    assert_eq!(created["events"], json!(["top_up.paid", "wallet.low_balance"]));
    assert_eq!((created["owner_type"].as_str(), created["owner_id"].as_str()), (Some("person"), Some("ann")));
    assert_eq!(created["disabled"], false);
    // The secret is shown once.
    let (s, got) = app.get(&format!("/v1/webhook-endpoints/{id}"), &ann).await;
    assert_eq!(s, 200, "{got}");
    assert!(got.get("secret").is_none(), "{got}");
    // Others see nothing.
    let (s, b) = app.get(&format!("/v1/webhook-endpoints/{id}"), &bob).await;
    assert_error(s, &b, 404, "not_found");
    let (_, list) = app.get("/v1/webhook-endpoints", &bob).await;
    assert_eq!(list["data"], json!([]));
    let (_, list) = app.get("/v1/webhook-endpoints", &ann).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    // Bad input changes nothing.
    for body in [
        json!({"url": url, "events": []}),
        json!({"url": url, "events": ["wallet.melted"]}),
        json!({"url": url, "events": ["*"], "platform": true, "org_id": "org_x"}),
    ] {
        let (s, b) = app.post("/v1/webhook-endpoints", &ann, body).await;
        assert_error(s, &b, 422, "validation_error");
    }
    let (s, b) =
        app.post("/v1/webhook-endpoints", &ann, json!({"url": url, "events": ["*"], "platform": true})).await;
    assert_error(s, &b, 403, "forbidden");
    // Organizations: owners and admins, not plain members.
    let (_, org) = app.post("/v1/orgs", &ann, json!({"name": "Ann Co"})).await;
    let org_id = org["id"].as_str().unwrap().to_string();
    app.post(&format!("/v1/orgs/{org_id}/members"), &ann, json!({"user_id": "bob"})).await;
    let (s, b) =
        app.post("/v1/webhook-endpoints", &bob, json!({"url": url, "events": ["*"], "org_id": org_id})).await;
    assert_error(s, &b, 403, "forbidden");
    let (s, b) =
        app.post("/v1/webhook-endpoints", &ann, json!({"url": url, "events": ["*"], "org_id": org_id})).await;
    assert_eq!((s.as_u16(), b["owner_type"].as_str()), (201, Some("org")), "{b}");
    let op = app.operator_token();
    let (s, b) =
        app.post("/v1/webhook-endpoints", &op, json!({"url": url, "events": ["*"], "platform": true})).await;
    assert_eq!((s.as_u16(), b["owner_type"].as_str()), (201, Some("platform")), "{b}");
    // PATCH: events, description, disabled.
    let (s, p) = app
        .patch(
            &format!("/v1/webhook-endpoints/{id}"),
            &ann,
            json!({"events": ["*"], "description": null, "disabled": true}),
        )
        .await;
    assert_eq!(s, 200, "{p}");
    assert_eq!(
        (p["events"].clone(), p["description"].clone(), p["disabled"].clone(), p["disabled_reason"].clone()),
        (json!(["*"]), json!(null), json!(true), json!("owner"))
    );
    let (s, p) = app.patch(&format!("/v1/webhook-endpoints/{id}"), &bob, json!({"disabled": false})).await;
    assert_error(s, &p, 404, "not_found");
    // Rotation: a new secret, the old one signs for 24 hours more.
    let (s, r) = app.post(&format!("/v1/webhook-endpoints/{id}/rotate-secret"), &ann, json!({})).await;
    assert_eq!(s, 200, "{r}");
    let rotated = r["secret"].as_str().unwrap();
    assert!(rotated.starts_with("whsec_") && rotated != secret);
    let until =
        chrono::DateTime::parse_from_rfc3339(r["previous_secret_expires_at"].as_str().unwrap()).unwrap();
    let hours = (until.with_timezone(&chrono::Utc) - chrono::Utc::now()).num_minutes();
    assert!((23 * 60..=24 * 60).contains(&hours), "{hours}");
    // Delete.
    let (s, _, _) =
        app.send(Method::DELETE, &format!("/v1/webhook-endpoints/{id}"), Some(&bob), None, None).await;
    assert_eq!(s, 404);
    let (s, _, _) =
        app.send(Method::DELETE, &format!("/v1/webhook-endpoints/{id}"), Some(&ann), None, None).await;
    assert_eq!(s, 204);
    let (s, b) = app.get(&format!("/v1/webhook-endpoints/{id}"), &ann).await;
    assert_error(s, &b, 404, "not_found");
}

async fn events_fan_out_to_the_endpoints_that_listen(app: TestApp) {
    let ann = app.token("ann");
    let op = app.operator_token();
    let wallet = app.wallet_of("ann").await;
    // Nothing listens on these ports: deliveries stay pending (failing).
    let mk = |events: serde_json::Value, token: String, extra: serde_json::Value| {
        let mut body = json!({"url": "http://127.0.0.1:9/none", "events": events});
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        (token, body)
    };
    let mut ids = Vec::new();
    for (token, body) in [
        mk(json!(["wallet.frozen"]), ann.clone(), json!({})),
        mk(json!(["top_up.paid"]), ann.clone(), json!({})),
        mk(json!(["*"]), op.clone(), json!({"platform": true})),
        mk(json!(["*"]), app.token("bob"), json!({})),
    ] {
        let (s, b) = app.post("/v1/webhook-endpoints", &token, body).await;
        assert_eq!(s, 201, "{b}");
        ids.push(b["id"].as_str().unwrap().to_string());
    }
    let (s, b) =
        app.post(&format!("/v1/admin/wallets/{wallet}/freeze"), &op, json!({"reason": "check"})).await;
    assert_eq!(s, 200, "{b}");
    use diesel::prelude::*;
    use tally::db::schema::webhook_deliveries as d;
    let conn: &mut tally::db::DbConn = &mut app.conn();
    let mut got: Vec<String> = d::table.select(d::endpoint_id).load(conn).unwrap();
    got.sort();
    let mut expected = vec![ids[0].clone(), ids[2].clone()];
    expected.sort();
    assert_eq!(got, expected, "Ann's wallet.frozen endpoint and the platform's");
}

/// One request a test receiver got.
#[derive(Clone, Debug)]
pub struct Received {
    pub at: Instant,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

/// A webhook receiver on 127.0.0.1: records every request and answers 500
/// to the first `fail_first`, then 204.
pub struct Receiver {
    pub url: String,
    pub got: Arc<Mutex<Vec<Received>>>,
    handle: actix_web::dev::ServerHandle,
}

impl Receiver {
    pub fn start(fail_first: usize) -> Receiver {
        let got: Arc<Mutex<Vec<Received>>> = Arc::default();
        let state = got.clone();
        let server = HttpServer::new(move || {
            let state = state.clone();
            App::new().default_service(web::to(move |req: HttpRequest, body: web::Bytes| {
                let state = state.clone();
                async move {
                    let mut headers = reqwest::header::HeaderMap::new();
                    for (name, value) in req.headers() {
                        headers.insert(
                            reqwest::header::HeaderName::from_bytes(name.as_str().as_bytes()).unwrap(),
                            reqwest::header::HeaderValue::from_bytes(value.as_bytes()).unwrap(),
                        );
                    }
                    let mut got = state.lock().unwrap();
                    got.push(Received {
                        at: Instant::now(),
                        headers,
                        body: String::from_utf8_lossy(&body).into(),
                    });
                    if got.len() <= fail_first {
                        HttpResponse::InternalServerError().finish()
                    } else {
                        HttpResponse::NoContent().finish()
                    }
                }
            }))
        })
        .workers(1)
        .bind(("127.0.0.1", 0))
        .unwrap();
        let port = server.addrs()[0].port();
        let server = server.run();
        let handle = server.handle();
        tokio::spawn(server);
        Receiver { url: format!("http://127.0.0.1:{port}/hooks"), got, handle }
    }

    pub fn received(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    /// Waits until `n` requests arrived (at most 30 s).
    pub async fn wait_for(&self, n: usize) -> Vec<Received> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let got = self.received();
            if got.len() >= n {
                return got;
            }
            assert!(Instant::now() < deadline, "only {} of {n} deliveries arrived", got.len());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        drop(self.handle.stop(false));
    }
}

/// Registers an endpoint; returns its id and secret.
async fn register(app: &TestApp, token: &str, url: &str, events: Value) -> (String, String) {
    let (s, b) = app.post("/v1/webhook-endpoints", token, json!({"url": url, "events": events})).await;
    assert_eq!(s, 201, "{b}");
    (b["id"].as_str().unwrap().to_string(), b["secret"].as_str().unwrap().to_string())
}

async fn a_failing_receiver_gets_the_same_webhook_id_with_backoff(app: TestApp) {
    let receiver = Receiver::start(2);
    let ann = app.token("ann");
    let op = app.operator_token();
    let wallet = app.wallet_of("ann").await;
    let (endpoint, secret) = register(&app, &ann, &receiver.url, json!(["wallet.frozen"])).await;
    let (s, b) =
        app.post(&format!("/v1/admin/wallets/{wallet}/freeze"), &op, json!({"reason": "check"})).await;
    assert_eq!(s, 200, "{b}");
    let got = receiver.wait_for(3).await;
    let (_, events) = app.get("/v1/events", &ann).await;
    let event_id = events["data"][0]["id"].as_str().unwrap().to_string();
    // The same webhook-id each time, each signature verified by the
    // Standard Webhooks reference verifier.
    let verifier = standardwebhooks::Webhook::new(&secret).unwrap();
    for r in &got {
        assert_eq!(r.headers["webhook-id"], event_id.as_str());
        verifier.verify(r.body.as_bytes(), &r.headers).expect("the signature verifies");
        let body: Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(
            (body["id"].as_str(), body["type"].as_str()),
            (Some(event_id.as_str()), Some("wallet.frozen"))
        );
        assert_eq!(body["data"]["id"], wallet.as_str());
    }
    // A tampered body does not verify.
    assert!(verifier.verify(b"{}", &got[0].headers).is_err());
    // The schedule: base (10 ms) after the first failure, 60 x base after the second.
    assert!(got[1].at - got[0].at >= Duration::from_millis(10), "{:?}", got[1].at - got[0].at);
    assert!(got[2].at - got[1].at >= Duration::from_millis(600), "{:?}", got[2].at - got[1].at);
    // Nothing more after the success.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.received().len(), 3);
    let deadline = Instant::now() + Duration::from_secs(10);
    let log = loop {
        let (s, log) = app.get(&format!("/v1/webhook-endpoints/{endpoint}/deliveries"), &ann).await;
        assert_eq!(s, 200, "{log}");
        if log["data"][0]["status"] == "succeeded" || Instant::now() > deadline {
            break log;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let d = &log["data"][0];
    assert_eq!((d["event_id"].as_str(), d["status"].as_str()), (Some(event_id.as_str()), Some("succeeded")));
    assert_eq!(d["next_attempt_at"], Value::Null);
    let codes: Vec<i64> =
        d["attempts"].as_array().unwrap().iter().map(|a| a["status_code"].as_i64().unwrap()).collect();
    assert_eq!(codes, vec![500, 500, 204]);
    assert!(d["attempts"][0]["next_attempt_at"].is_string() && d["attempts"][2]["next_attempt_at"].is_null());
    // Redelivery sends it once more, with the same id.
    let (s, r) = app.post(&format!("/v1/events/{event_id}/redeliver"), &ann, json!({})).await;
    assert_eq!((s.as_u16(), r["endpoint_ids"].clone()), (202, json!([endpoint])), "{r}");
    let got = receiver.wait_for(4).await;
    assert_eq!(got[3].headers["webhook-id"], event_id.as_str());
    let (s, b) = app.post(&format!("/v1/events/{event_id}/redeliver"), &app.token("bob"), json!({})).await;
    assert_error(s, &b, 404, "not_found");
}

async fn three_instances_deliver_each_event_once(app: TestApp) {
    let receiver = Receiver::start(0);
    let ann = app.token("ann");
    let op = app.operator_token();
    let wallet = app.wallet_of("ann").await;
    register(&app, &ann, &receiver.url, json!(["*"])).await;
    let mut others = Vec::new();
    for _ in 0..2 {
        let settings = tally::config::Settings::from_values(&app.settings).unwrap();
        let other = tally::startup::Application::build(settings).unwrap();
        others.push(other.server_handle());
        tokio::spawn(other.run_until_stopped());
    }
    for i in 0..5 {
        for action in ["freeze", "unfreeze"] {
            let (s, b) = app
                .post(
                    &format!("/v1/admin/wallets/{wallet}/{action}"),
                    &op,
                    json!({"reason": format!("r{i}")}),
                )
                .await;
            assert_eq!(s, 200, "{b}");
        }
    }
    receiver.wait_for(10).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = receiver.received();
    let mut ids: Vec<String> =
        got.iter().map(|r| r.headers["webhook-id"].to_str().unwrap().to_string()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!((got.len(), ids.len()), (10, 10), "each event exactly once");
    assert_eq!(app.count("webhook_attempts"), 10);
    for handle in others {
        handle.stop(false).await;
    }
}

/// An endpoint whose deliveries fail for 3 days is disabled at its next
/// failure; `webhook_endpoint.disabled` (the endpoint as shown) is recorded
/// once and delivered to the owner's other endpoints, not to others'.
async fn an_endpoint_failing_for_three_days_is_disabled_and_announced_once(app: TestApp) {
    use diesel::prelude::*;
    use tally::db::schema::webhook_endpoints as we;
    let failing = Receiver::start(usize::MAX);
    let healthy = Receiver::start(0);
    let strangers = Receiver::start(0);
    let ann = app.token("ann");
    let op = app.operator_token();
    let wallet = app.wallet_of("ann").await;
    let (endpoint, _) = register(&app, &ann, &failing.url, json!(["wallet.frozen"])).await;
    let (_, secret) = register(&app, &ann, &healthy.url, json!(["webhook_endpoint.disabled"])).await;
    register(&app, &app.token("bob"), &strangers.url, json!(["*"])).await;
    let (s, b) = app.post(&format!("/v1/admin/wallets/{wallet}/freeze"), &op, json!({"reason": "x"})).await;
    assert_eq!(s, 200, "{b}");
    failing.wait_for(1).await;
    // Failing since 3 days and a minute, as if the retries had gone on
    // (once the first failure is recorded).
    let since = chrono::Utc::now().naive_utc() - chrono::Duration::days(3) - chrono::Duration::minutes(1);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n = diesel::update(we::table.find(&endpoint).filter(we::failing_since.is_not_null()))
            .set(we::failing_since.eq(Some(since)))
            .execute(&mut app.conn())
            .unwrap();
        if n == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "the first failure was not recorded");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let got = healthy.wait_for(1).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let shown = loop {
        let (s, e) = app.get(&format!("/v1/webhook-endpoints/{endpoint}"), &ann).await;
        assert_eq!(s, 200, "{e}");
        if e["disabled"] == true || Instant::now() > deadline {
            break e;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        (shown["disabled"].as_bool(), shown["disabled_reason"].as_str()),
        (Some(true), Some("failing"))
    );
    let e = crate::events::only(&app, &ann, "webhook_endpoint.disabled").await;
    assert_eq!(e["subject"], json!({"type": "person", "id": "ann", "wallet_id": null}));
    assert_eq!(e["data"], shown);
    // Delivered to the other endpoint, signed with its secret.
    assert_eq!(got[0].headers["webhook-id"], e["id"].as_str().unwrap());
    let verifier = standardwebhooks::Webhook::new(&secret).unwrap();
    verifier.verify(got[0].body.as_bytes(), &got[0].headers).expect("the signature verifies");
    let body: Value = serde_json::from_str(&got[0].body).unwrap();
    assert_eq!((body["type"].as_str(), &body["data"]), (Some("webhook_endpoint.disabled"), &shown));
    // Disabled, it is tried no more; nothing more is announced.
    let tries = failing.received().len();
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(failing.received().len(), tries);
    assert_eq!(crate::events::listed(&app, &ann, "webhook_endpoint.disabled").await.len(), 1);
    assert_eq!(healthy.received().len(), 1);
    assert!(strangers.received().is_empty(), "Bob hears nothing of Ann's endpoint");
}
