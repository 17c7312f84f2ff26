//! JWT: HS256 with a shared secret, RS256 / ES256 with a public key, or
//! the keys an identity provider publishes at a JWKS URL (see
//! [`super::jwks`]). The claims that carry the person's id and roles are
//! configurable; `aud` may be a string or an array.

use std::time::Duration;

use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::jwks::JwksCache;
use crate::config::{ConfigError, JwtSettings};

/// Clock skew tolerated on `exp` and `nbf`.
pub const MAX_LEEWAY_SECS: u64 = 30;

/// The claims `tally token` writes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// The person's id.
    pub sub: String,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    /// `admin` (operator) and/or `service` (a trusted backend).
    #[serde(default)]
    pub roles: Vec<String>,
}

/// Who a verified token names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The person's id (the subject claim).
    pub sub: String,
    /// The roles claim's strings (`admin`, `service`, anything else).
    pub roles: Vec<String>,
}

/// Why a token was refused (never shown in detail to the caller).
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("invalid token: {0}")]
    Invalid(#[from] jsonwebtoken::errors::Error),
    #[error("invalid subject")]
    BadSubject,
    #[error("the token names no key (kid)")]
    NoKid,
    #[error("no key '{0}' in the JWKS")]
    UnknownKid(String),
}

/// Where the verifying keys come from.
enum Keys {
    /// One key and its algorithm (a secret or a PEM public key).
    Fixed(DecodingKey, Algorithm),
    /// An identity provider's JWKS, by `kid`.
    Jwks(JwksCache),
}

/// Verifies bearer tokens; each key has its one pinned algorithm.
pub struct JwtVerifier {
    keys: Keys,
    validation: Validation,
    subject_claim: String,
    roles_claim: String,
}

impl JwtVerifier {
    pub fn new(settings: &JwtSettings) -> Result<Self, ConfigError> {
        let keys = match (&settings.secret, &settings.public_key_pem, &settings.jwks_url) {
            (Some(secret), None, None) => {
                if secret.len() < 16 {
                    return Err(ConfigError("TALLY_JWT_SECRET must be at least 16 characters".into()));
                }
                Keys::Fixed(DecodingKey::from_secret(secret.as_bytes()), Algorithm::HS256)
            }
            (None, Some(pem), None) => {
                if let Ok(key) = DecodingKey::from_rsa_pem(pem.as_bytes()) {
                    Keys::Fixed(key, Algorithm::RS256)
                } else if let Ok(key) = DecodingKey::from_ec_pem(pem.as_bytes()) {
                    Keys::Fixed(key, Algorithm::ES256)
                } else {
                    return Err(ConfigError(
                        "TALLY_JWT_PUBLIC_KEY is neither an RSA nor an EC (P-256) public key in PEM".into(),
                    ));
                }
            }
            (None, None, Some(url)) => Keys::Jwks(JwksCache::new(url)?),
            (None, None, None) => {
                return Err(ConfigError(
                    "TALLY_JWT_SECRET is not set (or set TALLY_JWT_PUBLIC_KEY to a PEM file, or TALLY_JWT_JWKS_URL)"
                        .into(),
                ))
            }
            _ => {
                return Err(ConfigError(
                    "set only one of TALLY_JWT_SECRET, TALLY_JWT_PUBLIC_KEY and TALLY_JWT_JWKS_URL".into(),
                ))
            }
        };
        let subject_claim = non_empty(&settings.subject_claim, "sub");
        let roles_claim = non_empty(&settings.roles_claim, "roles");
        // The algorithm is set per key when verifying.
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = MAX_LEEWAY_SECS;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        let mut required = vec!["exp"];
        if subject_claim == "sub" {
            required.push("sub");
        }
        if settings.issuer.is_some() {
            required.push("iss");
        }
        if settings.audience.is_some() {
            required.push("aud");
        }
        validation.set_required_spec_claims(&required);
        match &settings.issuer {
            Some(iss) => validation.set_issuer(&[iss]),
            None => validation.iss = None,
        }
        // jsonwebtoken checks `aud` as a string or an array of strings.
        match &settings.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        Ok(JwtVerifier { keys, validation, subject_claim, roles_claim })
    }

    /// The identity a token carries, if its signature, algorithm, expiry,
    /// issuer and audience hold.
    pub async fn verify(&self, token: &str) -> Result<Identity, TokenError> {
        let (key, algorithm) = match &self.keys {
            Keys::Fixed(key, algorithm) => (key.clone(), *algorithm),
            Keys::Jwks(cache) => {
                let kid = jsonwebtoken::decode_header(token)?.kid.ok_or(TokenError::NoKid)?;
                cache.key(&kid).await?
            }
        };
        let mut validation = self.validation.clone();
        validation.algorithms = vec![algorithm];
        let data = decode::<Map<String, Value>>(token, &key, &validation)?;
        self.identity(&data.claims)
    }

    fn identity(&self, claims: &Map<String, Value>) -> Result<Identity, TokenError> {
        let sub = match claim(claims, &self.subject_claim) {
            Some(Value::String(s)) => s.clone(),
            _ => return Err(TokenError::BadSubject),
        };
        if sub.is_empty() || sub.len() > 255 || sub.chars().any(char::is_control) {
            return Err(TokenError::BadSubject);
        }
        let roles = match claim(claims, &self.roles_claim) {
            Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).map(str::to_string).collect(),
            Some(Value::String(s)) => s.split_whitespace().map(str::to_string).collect(),
            _ => Vec::new(),
        };
        Ok(Identity { sub, roles })
    }
}

fn non_empty(value: &str, default: &str) -> String {
    if value.trim().is_empty() {
        default.to_string()
    } else {
        value.trim().to_string()
    }
}

/// The claim of that exact name (Auth0's namespaced claims are URLs, dots
/// and all); failing that, a dotted path into nested objects (Keycloak's
/// `realm_access.roles`).
fn claim<'a>(claims: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    if let Some(v) = claims.get(name) {
        return Some(v);
    }
    let mut parts = name.split('.');
    let mut value = claims.get(parts.next()?)?;
    for part in parts {
        value = value.as_object()?.get(part)?;
    }
    Some(value)
}

/// Mints an HS256 token with the configured secret (`tally token`).
pub fn mint_token(
    settings: &JwtSettings,
    sub: &str,
    roles: &[String],
    ttl: Duration,
) -> Result<String, ConfigError> {
    let secret = settings
        .secret
        .as_ref()
        .ok_or_else(|| ConfigError("tally token signs with TALLY_JWT_SECRET, which is not set".into()))?;
    let now = chrono::Utc::now().timestamp().max(0) as u64;
    let claims = Claims {
        sub: sub.to_string(),
        exp: now + ttl.as_secs(),
        iat: Some(now),
        iss: settings.issuer.clone(),
        aud: settings.audience.clone(),
        roles: roles.to_vec(),
    };
    encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret.as_bytes()))
        .map_err(|e| ConfigError(format!("cannot sign the token: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> JwtSettings {
        JwtSettings {
            secret: Some("a-test-secret-of-some-length".into()),
            issuer: Some("https://issuer.test".into()),
            audience: Some("tally".into()),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn minted_tokens_verify() {
        let s = settings();
        let token = mint_token(&s, "alice", &["admin".into()], Duration::from_secs(60)).unwrap();
        let claims = JwtVerifier::new(&s).unwrap().verify(&token).await.unwrap();
        assert_eq!(claims.sub, "alice");
        assert_eq!(claims.roles, vec!["admin".to_string()]);
    }

    #[tokio::test]
    async fn wrong_issuer_audience_or_secret_is_refused() {
        let token = mint_token(&settings(), "alice", &[], Duration::from_secs(60)).unwrap();
        for other in [
            JwtSettings { issuer: Some("https://other".into()), ..settings() },
            JwtSettings { audience: Some("other".into()), ..settings() },
            JwtSettings { secret: Some("another-secret-entirely".into()), ..settings() },
        ] {
            assert!(JwtVerifier::new(&other).unwrap().verify(&token).await.is_err());
        }
    }

    #[tokio::test]
    async fn alg_none_is_refused() {
        use base64::Engine;
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let header = b64(r#"{"alg":"none","typ":"JWT"}"#);
        let body = b64(r#"{"sub":"alice","exp":99999999999}"#);
        let token = format!("{header}.{body}.");
        assert!(JwtVerifier::new(&settings()).unwrap().verify(&token).await.is_err());
    }

    #[test]
    fn claims_are_found_by_exact_name_then_by_path() {
        let claims: Map<String, Value> = serde_json::from_value(serde_json::json!({
            "https://tally.test/roles": ["admin"],
            "realm_access": {"roles": ["service"]},
            "scope": "a b",
        }))
        .unwrap();
        assert_eq!(claim(&claims, "https://tally.test/roles"), Some(&serde_json::json!(["admin"])));
        assert_eq!(claim(&claims, "realm_access.roles"), Some(&serde_json::json!(["service"])));
        assert_eq!(claim(&claims, "realm_access.nothing"), None);
        assert_eq!(claim(&claims, "scope.x"), None);
    }
}
