//! JWT: HS256 with a shared secret, or RS256 / ES256 with a public key.

use std::time::Duration;

use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, JwtSettings};

/// Clock skew tolerated on `exp` and `nbf`.
pub const MAX_LEEWAY_SECS: u64 = 30;

/// The claims tally reads.
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

/// Why a token was refused (never shown in detail to the caller).
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("invalid token: {0}")]
    Invalid(#[from] jsonwebtoken::errors::Error),
    #[error("invalid subject")]
    BadSubject,
}

/// Verifies bearer tokens with one pinned algorithm.
pub struct JwtVerifier {
    key: DecodingKey,
    validation: Validation,
}

impl JwtVerifier {
    pub fn new(settings: &JwtSettings) -> Result<Self, ConfigError> {
        let (key, algorithm) = match (&settings.secret, &settings.public_key_pem) {
            (Some(_), Some(_)) => {
                return Err(ConfigError(
                    "set either TALLY_JWT_SECRET or TALLY_JWT_PUBLIC_KEY, not both".into(),
                ))
            }
            (Some(secret), None) => {
                if secret.len() < 16 {
                    return Err(ConfigError("TALLY_JWT_SECRET must be at least 16 characters".into()));
                }
                (DecodingKey::from_secret(secret.as_bytes()), Algorithm::HS256)
            }
            (None, Some(pem)) => {
                if let Ok(key) = DecodingKey::from_rsa_pem(pem.as_bytes()) {
                    (key, Algorithm::RS256)
                } else if let Ok(key) = DecodingKey::from_ec_pem(pem.as_bytes()) {
                    (key, Algorithm::ES256)
                } else {
                    return Err(ConfigError(
                        "TALLY_JWT_PUBLIC_KEY is neither an RSA nor an EC (P-256) public key in PEM".into(),
                    ));
                }
            }
            (None, None) => {
                return Err(ConfigError(
                    "TALLY_JWT_SECRET is not set (or set TALLY_JWT_PUBLIC_KEY to a PEM file)".into(),
                ))
            }
        };
        let mut validation = Validation::new(algorithm);
        validation.leeway = MAX_LEEWAY_SECS;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        let mut required = vec!["exp", "sub"];
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
        match &settings.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        Ok(JwtVerifier { key, validation })
    }

    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let data = decode::<Claims>(token, &self.key, &self.validation)?;
        let sub = &data.claims.sub;
        if sub.is_empty() || sub.len() > 255 || sub.chars().any(char::is_control) {
            return Err(TokenError::BadSubject);
        }
        Ok(data.claims)
    }
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

    #[test]
    fn minted_tokens_verify() {
        let s = settings();
        let token = mint_token(&s, "alice", &["admin".into()], Duration::from_secs(60)).unwrap();
        let claims = JwtVerifier::new(&s).unwrap().verify(&token).unwrap();
        assert_eq!(claims.sub, "alice");
        assert_eq!(claims.roles, vec!["admin".to_string()]);
    }

    #[test]
    fn wrong_issuer_audience_or_secret_is_refused() {
        let token = mint_token(&settings(), "alice", &[], Duration::from_secs(60)).unwrap();
        for other in [
            JwtSettings { issuer: Some("https://other".into()), ..settings() },
            JwtSettings { audience: Some("other".into()), ..settings() },
            JwtSettings { secret: Some("another-secret-entirely".into()), ..settings() },
        ] {
            assert!(JwtVerifier::new(&other).unwrap().verify(&token).is_err());
        }
    }

    #[test]
    fn alg_none_is_refused() {
        use base64::Engine;
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let header = b64(r#"{"alg":"none","typ":"JWT"}"#);
        let body = b64(r#"{"sub":"alice","exp":99999999999}"#);
        let token = format!("{header}.{body}.");
        assert!(JwtVerifier::new(&settings()).unwrap().verify(&token).is_err());
    }
}
