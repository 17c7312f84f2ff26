//! Who is calling: JWT verification (algorithm pinned, `exp` required,
//! `iss`/`aud` when configured) and the extractors that make "login
//! required" a handler parameter.

mod extract;
pub mod jwks;
mod jwt;

pub use extract::{ApiKeyUsed, AuthUser, KeyAllowed, Operator};
pub use jwt::{mint_token, Claims, Identity, JwtVerifier, TokenError, MAX_LEEWAY_SECS};
