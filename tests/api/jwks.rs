//! Tokens of real identity providers: keys from a JWKS URL (a local JWKS
//! server started here), fetched once and cached, `aud` as a string or an
//! array, and the claims that carry the person's id and roles configured.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use crate::both;
use crate::helpers::{assert_error, mint, Backend, TestApp, SECRET};

both!(
    jwks_keys_are_fetched_once_and_cached,
    aud_may_be_a_string_or_an_array,
    subject_and_roles_claims_are_configurable
);

const ISSUER: &str = "https://idp.test/realms/tally";

fn pem(name: &str) -> String {
    std::fs::read_to_string(format!("{}/tests/fixtures/jwt/{name}.pem", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

fn encoding_key(name: &str, alg: Algorithm) -> EncodingKey {
    match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(pem(name).as_bytes()).unwrap(),
        _ => EncodingKey::from_ec_pem(pem(name).as_bytes()).unwrap(),
    }
}

/// The public JWK of a fixture key, under `kid`.
pub fn jwk(name: &str, alg: Algorithm, kid: &str) -> Value {
    let mut jwk = Jwk::from_encoding_key(&encoding_key(name, alg), alg).unwrap();
    jwk.common.key_id = Some(kid.to_string());
    serde_json::to_value(jwk).unwrap()
}

/// A token signed with a fixture key, `kid` in its header.
pub fn sign(name: &str, alg: Algorithm, kid: Option<&str>, claims: Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&header, &claims, &encoding_key(name, alg)).unwrap()
}

fn claims(sub: &str, aud: Value) -> Value {
    let now = chrono::Utc::now().timestamp();
    json!({"sub": sub, "iss": ISSUER, "aud": aud, "exp": now + 600, "iat": now})
}

/// A JWKS endpoint: what it serves can change, and it counts its requests.
pub struct JwksServer {
    pub url: String,
    pub keys: Arc<Mutex<Vec<Value>>>,
    pub hits: Arc<AtomicUsize>,
    handle: actix_web::dev::ServerHandle,
}

impl JwksServer {
    pub async fn start(keys: Vec<Value>) -> JwksServer {
        let keys = Arc::new(Mutex::new(keys));
        let hits = Arc::new(AtomicUsize::new(0));
        let (k, h) = (keys.clone(), hits.clone());
        let server = actix_web::HttpServer::new(move || {
            let (k, h) = (k.clone(), h.clone());
            actix_web::App::new().route(
                "/jwks.json",
                actix_web::web::get().to(move || {
                    let (k, h) = (k.clone(), h.clone());
                    async move {
                        h.fetch_add(1, Ordering::SeqCst);
                        let keys = k.lock().unwrap().clone();
                        actix_web::HttpResponse::Ok().json(json!({ "keys": keys }))
                    }
                }),
            )
        })
        .workers(1)
        .bind("127.0.0.1:0")
        .unwrap();
        let port = server.addrs()[0].port();
        let server = server.run();
        let handle = server.handle();
        tokio::spawn(server);
        JwksServer { url: format!("http://127.0.0.1:{port}/jwks.json"), keys, hits, handle }
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        drop(self.handle.stop(false));
    }
}

async fn with_jwks(app: &TestApp, jwks: &JwksServer) -> TestApp {
    let backend = if app.settings["DATABASE_URL"].starts_with("postgres") {
        Backend::Postgres
    } else {
        Backend::Sqlite
    };
    let url = jwks.url.clone();
    TestApp::spawn_with(backend, move |s| {
        s.remove("TALLY_JWT_SECRET");
        s.insert("TALLY_JWT_JWKS_URL".into(), url);
        s.insert("TALLY_JWT_ISSUER".into(), ISSUER.into());
        s.insert("TALLY_JWT_AUDIENCE".into(), "tally".into());
    })
    .await
    .expect("app with JWKS")
}

async fn me(app: &TestApp, token: &str) -> (u16, Value) {
    let (s, b) = app.get("/v1/me", token).await;
    (s.as_u16(), b)
}

async fn jwks_keys_are_fetched_once_and_cached(app: TestApp) {
    let jwks = JwksServer::start(vec![
        jwk("es256-a", Algorithm::ES256, "key-a"),
        jwk("rs256-c", Algorithm::RS256, "key-c"),
    ])
    .await;
    let app = with_jwks(&app, &jwks).await;
    assert_eq!(jwks.hits(), 0, "fetched when first needed");

    let a = sign("es256-a", Algorithm::ES256, Some("key-a"), claims("alice", json!(["account", "tally"])));
    let (s, b) = me(&app, &a).await;
    assert_eq!((s, b["id"].as_str()), (200, Some("alice")), "{b}");
    assert_eq!(jwks.hits(), 1);
    let c = sign("rs256-c", Algorithm::RS256, Some("key-c"), claims("carol", json!("tally")));
    let (s, b) = me(&app, &c).await;
    assert_eq!((s, b["id"].as_str()), (200, Some("carol")), "{b}");
    for _ in 0..5 {
        assert_eq!(me(&app, &a).await.0, 200);
    }
    assert_eq!(jwks.hits(), 1, "the keys are cached");

    // Refused, without more fetches than one a minute: a kid the set does
    // not hold (even once published, until the minute has passed), a
    // token signed by another key under a known kid, an HS256 token naming
    // a known kid, and a token without a kid.
    jwks.keys.lock().unwrap().push(jwk("es256-b", Algorithm::ES256, "key-b"));
    let refused = [
        sign("es256-b", Algorithm::ES256, Some("key-b"), claims("bob", json!("tally"))),
        sign("es256-b", Algorithm::ES256, Some("key-a"), claims("bob", json!("tally"))),
        mint_hs256_with_kid("key-a"),
        sign("es256-a", Algorithm::ES256, None, claims("bob", json!("tally"))),
    ];
    for token in &refused {
        let (s, b) = app.get("/v1/me", token).await;
        assert_error(s, &b, 401, "unauthorized");
    }
    assert_eq!(jwks.hits(), 1, "no refresh within the minute of the last fetch");
    let after = jwks.hits();
    for token in &refused {
        let (s, _) = app.get("/v1/me", token).await;
        assert_eq!(s, 401);
    }
    assert_eq!(jwks.hits(), after, "no refresh storm on unknown kids");
    assert_eq!(me(&app, &a).await.0, 200);
    // The HS256 secret of the other tests means nothing here.
    let (s, b) = app.get("/v1/me", &mint("alice", &[], SECRET, Some(ISSUER), Some("tally"), 600)).await;
    assert_error(s, &b, 401, "unauthorized");
    assert_eq!(app.count("people"), 2, "only alice and carol were let in");
}

/// An HS256 token (signed with the test secret) whose header names `kid`.
fn mint_hs256_with_kid(kid: &str) -> String {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(kid.to_string());
    jsonwebtoken::encode(
        &header,
        &claims("mallory", json!("tally")),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

async fn aud_may_be_a_string_or_an_array(app: TestApp) {
    let backend = if app.settings["DATABASE_URL"].starts_with("postgres") {
        Backend::Postgres
    } else {
        Backend::Sqlite
    };
    let app = TestApp::spawn_with(backend, |s| {
        s.insert("TALLY_JWT_AUDIENCE".into(), "tally".into());
    })
    .await
    .unwrap();
    let token = |aud: Value| {
        let now = chrono::Utc::now().timestamp();
        let claims = json!({"sub": "alice", "aud": aud, "exp": now + 600});
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    };
    for aud in [json!("tally"), json!(["tally"]), json!(["account", "tally"])] {
        let (s, b) = me(&app, &token(aud.clone())).await;
        assert_eq!((s, b["id"].as_str()), (200, Some("alice")), "aud {aud}: {b}");
    }
    for aud in [json!("other"), json!(["account", "other"]), json!([]), json!(42)] {
        let (s, b) = app.get("/v1/me", &token(aud.clone())).await;
        assert_error(s, &b, 401, "unauthorized");
    }
    // Without an audience configured, any aud (string or array) is taken.
    let (s, b) = me(&TestApp::spawn(backend).await.unwrap(), &token(json!(["x", "y"]))).await;
    assert_eq!(s, 200, "{b}");
}

async fn subject_and_roles_claims_are_configurable(app: TestApp) {
    let backend = if app.settings["DATABASE_URL"].starts_with("postgres") {
        Backend::Postgres
    } else {
        Backend::Sqlite
    };
    // Keycloak's shape: the id in `preferred_username`, roles nested.
    let keycloak = TestApp::spawn_with(backend, |s| {
        s.insert("TALLY_JWT_SUBJECT_CLAIM".into(), "preferred_username".into());
        s.insert("TALLY_JWT_ROLES_CLAIM".into(), "realm_access.roles".into());
    })
    .await
    .unwrap();
    let hs = |claims: Value| {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    };
    let exp = chrono::Utc::now().timestamp() + 600;
    let ops = hs(json!({"sub": "f:9:ops", "preferred_username": "ops-1", "exp": exp,
                        "realm_access": {"roles": ["admin", "offline_access"]}, "roles": []}));
    let (s, b) = me(&keycloak, &ops).await;
    assert_eq!((s, b["id"].as_str()), (200, Some("ops-1")), "{b}");
    assert_eq!(b["roles"], json!(["admin", "offline_access"]));
    let (s, b) = keycloak.get("/v1/admin/ledger/verify", &ops).await;
    assert_eq!(s, 200, "{b}");
    // Roles in the default claim mean nothing here; no id claim is a 401.
    let plain = hs(json!({"sub": "x", "preferred_username": "pat", "exp": exp, "roles": ["admin"]}));
    let (s, b) = keycloak.get("/v1/admin/ledger/verify", &plain).await;
    assert_error(s, &b, 403, "forbidden");
    let (s, b) = keycloak.get("/v1/me", &hs(json!({"sub": "x", "exp": exp}))).await;
    assert_error(s, &b, 401, "unauthorized");
    let (s, b) = keycloak.get("/v1/me", &hs(json!({"preferred_username": 7, "exp": exp}))).await;
    assert_error(s, &b, 401, "unauthorized");

    // Auth0's shape: a namespaced claim (dots and all) named exactly.
    let auth0 = TestApp::spawn_with(backend, |s| {
        s.insert("TALLY_JWT_ROLES_CLAIM".into(), "https://tally.test/roles".into());
    })
    .await
    .unwrap();
    let token = hs(json!({"sub": "auth0|42", "exp": exp, "https://tally.test/roles": ["admin"]}));
    let (s, b) = auth0.get("/v1/admin/ledger/verify", &token).await;
    assert_eq!(s, 200, "{b}");
    let (_, b) = me(&auth0, &token).await;
    assert_eq!(b["id"], "auth0|42");
}
