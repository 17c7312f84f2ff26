//! An identity provider's signing keys, from its JWKS URL
//! (`TALLY_JWT_JWKS_URL`), cached by `kid`.
//!
//! The set is fetched when first needed, and fetched again (replacing the
//! cache whole, so a key the provider dropped is dropped here too) when a
//! token names a `kid` the cache does not hold, or when the cache is older
//! than [`MAX_AGE`]; never more than once per [`MIN_REFRESH`], so tokens
//! with made-up kids cannot make tally hammer the provider. Written here
//! rather than taken from a crate: jsonwebtoken already parses JWKs; what
//! is left is this rate-limited cache, whose policy is tally's own.
//!
//! Only signing keys are taken, each pinned to one algorithm from its own
//! type and curve (RSA: RS256 unless the key names another RS/PS algorithm;
//! EC P-256: ES256, P-384: ES384; Ed25519: EdDSA). Symmetric (`oct`) keys
//! are never taken from a URL.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};

use super::jwt::TokenError;
use crate::config::ConfigError;

/// The least time between two fetches of the set.
pub const MIN_REFRESH: Duration = Duration::from_secs(60);
/// A set older than this is fetched again when next used (its keys still
/// serve if that fetch fails).
pub const MAX_AGE: Duration = Duration::from_secs(3600);
/// How long one fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

type KeyMap = HashMap<String, (DecodingKey, Algorithm)>;

/// The keys of one JWKS URL.
pub struct JwksCache {
    url: String,
    client: reqwest::Client,
    min_refresh: Duration,
    keys: RwLock<Option<(KeyMap, Instant)>>,
    /// When the set was last fetched (whatever the outcome); held while
    /// fetching, so concurrent requests wait for one fetch.
    last_fetch: tokio::sync::Mutex<Option<Instant>>,
}

impl JwksCache {
    pub fn new(url: &str) -> Result<Self, ConfigError> {
        Self::with_min_refresh(url, MIN_REFRESH)
    }

    /// With another least time between fetches (for tests).
    pub fn with_min_refresh(url: &str, min_refresh: Duration) -> Result<Self, ConfigError> {
        let client = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .build()
            .map_err(|e| ConfigError(format!("TALLY_JWT_JWKS_URL: cannot build an HTTP client: {e}")))?;
        Ok(JwksCache {
            url: url.to_string(),
            client,
            min_refresh,
            keys: RwLock::new(None),
            last_fetch: tokio::sync::Mutex::new(None),
        })
    }

    /// The cached key `kid` and whether the cache is fresh.
    fn cached(&self, kid: &str) -> (Option<(DecodingKey, Algorithm)>, bool) {
        let guard = self.keys.read().unwrap_or_else(|e| e.into_inner());
        match guard.as_ref() {
            Some((keys, fetched)) => (keys.get(kid).cloned(), fetched.elapsed() < MAX_AGE),
            None => (None, false),
        }
    }

    /// The key `kid` names, fetching the set if the cache lacks it (or is
    /// stale) and the last fetch is at least [`MIN_REFRESH`] old.
    pub async fn key(&self, kid: &str) -> Result<(DecodingKey, Algorithm), TokenError> {
        if let (Some(key), true) = self.cached(kid) {
            return Ok(key);
        }
        let mut last = self.last_fetch.lock().await;
        // Another request may have fetched while this one waited.
        let (cached, fresh) = self.cached(kid);
        if let (Some(key), true) = (&cached, fresh) {
            return Ok(key.clone());
        }
        if last.is_some_and(|t| t.elapsed() < self.min_refresh) {
            return cached.ok_or_else(|| TokenError::UnknownKid(kid.to_string()));
        }
        *last = Some(Instant::now());
        match self.fetch().await {
            Ok(keys) => {
                tracing::info!(url = %self.url, keys = keys.len(), "JWKS fetched");
                let key = keys.get(kid).cloned();
                *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Some((keys, Instant::now()));
                key.ok_or_else(|| TokenError::UnknownKid(kid.to_string()))
            }
            Err(e) => {
                tracing::warn!(url = %self.url, error = %e, "fetching the JWKS failed");
                cached.ok_or_else(|| TokenError::UnknownKid(kid.to_string()))
            }
        }
    }

    async fn fetch(&self) -> Result<KeyMap, String> {
        let response = self.client.get(&self.url).send().await.map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("HTTP {}", response.status()));
        }
        let set: JwkSet = response.json().await.map_err(|e| format!("not a JWKS: {e}"))?;
        Ok(signing_keys(&set))
    }
}

/// The set's signing keys by kid, each with its one algorithm.
pub fn signing_keys(set: &JwkSet) -> KeyMap {
    set.keys
        .iter()
        .filter(|jwk| !matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)))
        .filter_map(|jwk| {
            let kid = jwk.common.key_id.clone()?;
            let algorithm = algorithm_of(jwk)?;
            let key = DecodingKey::from_jwk(jwk).ok()?;
            Some((kid, (key, algorithm)))
        })
        .collect()
}

fn algorithm_of(jwk: &Jwk) -> Option<Algorithm> {
    let named = jwk.common.key_algorithm.and_then(|a| Algorithm::try_from(a).ok());
    match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => match named {
            None => Some(Algorithm::RS256),
            Some(
                a @ (Algorithm::RS256
                | Algorithm::RS384
                | Algorithm::RS512
                | Algorithm::PS256
                | Algorithm::PS384
                | Algorithm::PS512),
            ) => Some(a),
            Some(_) => None,
        },
        AlgorithmParameters::EllipticCurve(ec) => {
            let by_curve = match ec.curve {
                EllipticCurve::P256 => Algorithm::ES256,
                EllipticCurve::P384 => Algorithm::ES384,
                _ => return None,
            };
            named.is_none_or(|a| a == by_curve).then_some(by_curve)
        }
        AlgorithmParameters::OctetKeyPair(okp) => (okp.curve == EllipticCurve::Ed25519
            && named.is_none_or(|a| a == Algorithm::EdDSA))
        .then_some(Algorithm::EdDSA),
        // Never a shared secret from a URL (nor a kind of key unknown here).
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use jsonwebtoken::EncodingKey;
    use serde_json::json;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    const KEY_A: &str = include_str!("../../tests/fixtures/jwt/es256-a.pem");
    const KEY_B: &str = include_str!("../../tests/fixtures/jwt/es256-b.pem");

    fn jwk(pem: &str, kid: &str) -> serde_json::Value {
        let key = EncodingKey::from_ec_pem(pem.as_bytes()).unwrap();
        let mut jwk = Jwk::from_encoding_key(&key, Algorithm::ES256).unwrap();
        jwk.common.key_id = Some(kid.into());
        serde_json::to_value(jwk).unwrap()
    }

    /// A bare HTTP server answering every request with the current set,
    /// counting them.
    async fn serve(set: Arc<Mutex<serde_json::Value>>, hits: Arc<AtomicUsize>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks", listener.local_addr().unwrap());
        tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else { return };
                let mut buf = [0u8; 4096];
                let _ = socket.read(&mut buf).await;
                hits.fetch_add(1, Ordering::SeqCst);
                let body = set.lock().unwrap().to_string();
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
            }
        });
        url
    }

    #[tokio::test]
    async fn unknown_kids_refresh_the_set_at_most_once_per_interval() {
        let set = Arc::new(Mutex::new(json!({"keys": [jwk(KEY_A, "a")]})));
        let hits = Arc::new(AtomicUsize::new(0));
        let url = serve(set.clone(), hits.clone()).await;
        let interval = Duration::from_millis(300);
        let cache = JwksCache::with_min_refresh(&url, interval).unwrap();
        let fetches = || hits.load(Ordering::SeqCst);

        assert_eq!(cache.key("a").await.unwrap().1, Algorithm::ES256);
        assert_eq!(fetches(), 1);
        assert!(cache.key("a").await.is_ok());
        assert_eq!(fetches(), 1, "cached");
        // The provider rotates in key b: within the interval it is unknown,
        // however often it is asked for.
        set.lock().unwrap()["keys"] = json!([jwk(KEY_A, "a"), jwk(KEY_B, "b")]);
        for _ in 0..5 {
            assert!(matches!(cache.key("b").await, Err(TokenError::UnknownKid(_))));
        }
        assert_eq!(fetches(), 1);
        tokio::time::sleep(interval + Duration::from_millis(50)).await;
        assert!(cache.key("b").await.is_ok(), "one refresh after the interval finds it");
        assert_eq!(fetches(), 2);
        // Many concurrent requests for an unknown kid make at most one fetch.
        tokio::time::sleep(interval + Duration::from_millis(50)).await;
        let many = futures_util::future::join_all((0..20).map(|_| cache.key("zzz"))).await;
        assert!(many.iter().all(Result::is_err));
        assert_eq!(fetches(), 3);
        // Key a, dropped by the provider, is dropped at the next refresh.
        set.lock().unwrap()["keys"] = json!([jwk(KEY_B, "b")]);
        tokio::time::sleep(interval + Duration::from_millis(50)).await;
        assert!(cache.key("c").await.is_err());
        assert_eq!(fetches(), 4);
        assert!(cache.key("a").await.is_err());
        assert!(cache.key("b").await.is_ok());
    }

    #[test]
    fn only_signing_keys_with_one_algorithm_are_taken() {
        let mut enc = jwk(KEY_A, "enc");
        enc["use"] = json!("enc");
        let mut mismatched = jwk(KEY_B, "mismatched");
        mismatched["alg"] = json!("RS256");
        let set: JwkSet = serde_json::from_value(json!({"keys": [
            jwk(KEY_A, "a"),
            enc,
            mismatched,
            {"kty": "oct", "kid": "secret", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQ"},
            {"kty": "EC", "crv": "P-256", "x": jwk(KEY_B, "x")["x"], "y": jwk(KEY_B, "x")["y"]},
        ]}))
        .unwrap();
        let keys = signing_keys(&set);
        let mut kids: Vec<&String> = keys.keys().collect();
        kids.sort();
        assert_eq!(kids, vec!["a"]);
        assert_eq!(keys["a"].1, Algorithm::ES256);
    }
}
