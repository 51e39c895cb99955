//! Credentials and tokens: argon2id password hashing, HS256 access tokens (JWT),
//! refresh tokens, and the `AuthAccount` bearer-token extractor.
//!
//! For: everything that proves who a caller is. Password work is CPU- and
//! memory-heavy, so it runs on tokio's blocking pool under a semaphore of
//! `hash_concurrency_max` workers, with at most `hash_queue_max` requests waiting
//! (past that: 503 `Busy`, never an unbounded queue). JWT expiry is checked against
//! the injected clock: `jsonwebtoken`'s own `exp`/`nbf` checks, which read the system
//! clock, are turned off. Not for: HTTP routes (`routes/`) or storing anything.

use std::sync::Arc;

use argon2::password_hash::{self, SaltString};
use argon2::{Algorithm, Argon2, PasswordHash, PasswordHasher, PasswordVerifier, Version};
use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm as JwtAlgorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::rngs::OsRng;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::{OnceCell, Semaphore};
use warpcore_persistence::store::AccountId;

use crate::config::{Argon2Params, ConfigError};
use crate::error::ApiError;
use crate::state::AppState;

/// Salt length for new password hashes (the argon2 recommendation).
const SALT_BYTES: usize = 16;
/// Length of the random part of a refresh token.
pub const REFRESH_TOKEN_BYTES: usize = 32;
/// Length of the random `jti` of an access token.
const JTI_BYTES: usize = 16;
/// Longest bearer token even looked at: ours are about 250 bytes; a longer one is not
/// ours and is refused before any decoding or HMAC work.
pub const BEARER_TOKEN_BYTES_MAX: usize = 2048;
/// `Retry-After` sent when the password hashing queue is full.
const BUSY_RETRY_AFTER_S: u32 = 1;
/// Hashed once (lazily) to give unknown usernames a hash to verify against.
const DUMMY_PASSWORD: &str = "warpcore-dummy-password-for-unknown-users";

/// The stored "password hash" of an account made by the admin bulk-token route (load
/// bots): not a PHC string, so no password matches it and password login answers as
/// for an unknown user. Such accounts connect only with tokens an admin mints.
pub const PASSWORD_LOGIN_DISABLED: &str = "!password-login-disabled";

/// Password hashing and verification with bounded concurrency and queueing.
pub struct Passwords {
    params: argon2::Params,
    /// Permits for running and waiting requests together: bounds the queue.
    admission: Semaphore,
    /// Permits for running hashes: bounds memory (`m_kib` each) and CPU.
    workers: Arc<Semaphore>,
    /// A hash of `DUMMY_PASSWORD` with the current parameters, so that logging in as
    /// an unknown user costs the same time as a wrong password.
    dummy_phc: OnceCell<String>,
}

impl Passwords {
    /// # Errors
    /// `Argon2Params` if argon2 refuses the parameters; `Zero` if `concurrency_max` is 0.
    pub fn new(
        params: Argon2Params,
        concurrency_max: usize,
        queue_max: usize,
    ) -> Result<Self, ConfigError> {
        if concurrency_max == 0 {
            return Err(ConfigError::Zero {
                field: "hash_concurrency_max",
            });
        }
        let params = argon2::Params::new(params.m_kib, params.t, params.p, None)
            .map_err(|e| ConfigError::Argon2Params(e.to_string()))?;
        let workers_max = concurrency_max.min(Semaphore::MAX_PERMITS);
        let admitted_max = workers_max
            .saturating_add(queue_max)
            .min(Semaphore::MAX_PERMITS);
        Ok(Passwords {
            params,
            admission: Semaphore::new(admitted_max),
            workers: Arc::new(Semaphore::new(workers_max)),
            dummy_phc: OnceCell::new(),
        })
    }

    /// An argon2id PHC string for `password`, with a fresh random salt.
    ///
    /// # Errors
    /// `Busy` if the queue is full; `Internal` if hashing fails.
    pub async fn hash(&self, password: String) -> Result<String, ApiError> {
        let argon2 = self.argon2();
        self.run_blocking(move || {
            let mut salt = [0u8; SALT_BYTES];
            OsRng.fill_bytes(&mut salt);
            let salt = SaltString::encode_b64(&salt)?;
            Ok(argon2
                .hash_password(password.as_bytes(), &salt)?
                .to_string())
        })
        .await?
        .map_err(|e: password_hash::Error| ApiError::Internal(format!("argon2 hash: {e}")))
    }

    /// Whether `password` matches the stored PHC string. With `None` (unknown user) or
    /// [`PASSWORD_LOGIN_DISABLED`] it verifies against a dummy hash, which costs the
    /// same, and answers `false`.
    ///
    /// # Errors
    /// `Busy` if the queue is full; `Internal` if the stored hash is corrupt.
    pub async fn verify(&self, password: String, phc: Option<String>) -> Result<bool, ApiError> {
        let (phc, known_user) = match phc {
            // A bot account (admin bulk tokens) has no password: answer as for an
            // unknown user, at the same cost.
            Some(phc) if phc == PASSWORD_LOGIN_DISABLED => (self.dummy_phc().await?.clone(), false),
            Some(phc) => (phc, true),
            None => (self.dummy_phc().await?.clone(), false),
        };
        let argon2 = self.argon2();
        let matched = self
            .run_blocking(move || {
                let hash = PasswordHash::new(&phc)?;
                match argon2.verify_password(password.as_bytes(), &hash) {
                    Ok(()) => Ok(true),
                    Err(password_hash::Error::Password) => Ok(false),
                    Err(other) => Err(other),
                }
            })
            .await?
            .map_err(|e| {
                ApiError::Internal(format!("argon2 verify (stored hash corrupt?): {e}"))
            })?;
        Ok(matched && known_user)
    }

    async fn dummy_phc(&self) -> Result<&String, ApiError> {
        self.dummy_phc
            .get_or_try_init(|| self.hash(DUMMY_PASSWORD.to_owned()))
            .await
    }

    fn argon2(&self) -> Argon2<'static> {
        Argon2::new(Algorithm::Argon2id, Version::V0x13, self.params.clone())
    }

    /// Runs `job` on the blocking pool once a worker permit is free. The permit moves
    /// into the job, so it is held until the hash finishes even if the request is
    /// dropped meanwhile: the bound holds for abandoned work too.
    async fn run_blocking<R: Send + 'static>(
        &self,
        job: impl FnOnce() -> R + Send + 'static,
    ) -> Result<R, ApiError> {
        let _admitted = self.admission.try_acquire().map_err(|_| ApiError::Busy {
            retry_after_s: BUSY_RETRY_AFTER_S,
        })?;
        let worker = Arc::clone(&self.workers)
            .acquire_owned()
            .await
            .map_err(|_| ApiError::Internal("password worker semaphore closed".to_owned()))?;
        tokio::task::spawn_blocking(move || {
            let _worker = worker;
            job()
        })
        .await
        .map_err(|e| ApiError::Internal(format!("password hashing task failed: {e}")))
    }
}

/// An account's role, carried in the access token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Player,
    Admin,
}

impl Role {
    /// The role named by a stored account row (`"player"` or `"admin"`).
    pub fn parse(name: &str) -> Option<Role> {
        match name {
            "player" => Some(Role::Player),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// The claims of a warpcore access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The account id, as a decimal string (RFC 7519 wants a string).
    pub sub: String,
    pub role: Role,
    pub iat: u64,
    pub exp: u64,
    /// Random, base64url: names this token (for revocation lists later).
    pub jti: String,
}

/// Who a valid bearer token says the caller is. As an extractor it answers 401
/// `UNAUTHORIZED` when the header is missing or the token is not valid now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthAccount {
    pub account_id: AccountId,
    pub role: Role,
}

/// HS256 keys and rules for access tokens.
pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    ttl_s: u64,
}

impl JwtKeys {
    pub fn new(secret: &[u8], ttl_s: u64) -> Self {
        let mut validation = Validation::new(JwtAlgorithm::HS256);
        // Time checks read the system clock inside jsonwebtoken: done by `verify`
        // against the injected clock instead.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.set_required_spec_claims(&["exp", "iat", "sub"]);
        JwtKeys {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            ttl_s,
        }
    }

    pub fn ttl_s(&self) -> u64 {
        self.ttl_s
    }

    /// A signed access token valid from `now_unix_s` for `ttl_s`.
    ///
    /// # Errors
    /// `Internal` if signing fails.
    pub fn issue(
        &self,
        account_id: AccountId,
        role: Role,
        now_unix_s: u64,
    ) -> Result<String, ApiError> {
        let mut jti = [0u8; JTI_BYTES];
        OsRng.fill_bytes(&mut jti);
        let claims = Claims {
            sub: account_id.to_string(),
            role,
            iat: now_unix_s,
            exp: now_unix_s.saturating_add(self.ttl_s),
            jti: URL_SAFE_NO_PAD.encode(jti),
        };
        jsonwebtoken::encode(&Header::new(JwtAlgorithm::HS256), &claims, &self.encoding)
            .map_err(|e| ApiError::Internal(format!("signing a JWT: {e}")))
    }

    /// The caller a token names, if its signature is ours and it has not expired at
    /// `now_unix_s` (a token is expired from its `exp` second on).
    ///
    /// # Errors
    /// `Unauthorized` for anything wrong with the token.
    pub fn verify(&self, token: &str, now_unix_s: u64) -> Result<AuthAccount, ApiError> {
        if token.len() > BEARER_TOKEN_BYTES_MAX {
            return Err(ApiError::Unauthorized);
        }
        let claims = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|_| ApiError::Unauthorized)?
            .claims;
        if claims.exp <= now_unix_s {
            return Err(ApiError::Unauthorized);
        }
        let account_id = claims
            .sub
            .parse::<AccountId>()
            .map_err(|_| ApiError::Unauthorized)?;
        Ok(AuthAccount {
            account_id,
            role: claims.role,
        })
    }
}

impl FromRequestParts<AppState> for AuthAccount {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer_token(parts).ok_or(ApiError::Unauthorized)?;
        let caller = state.jwt.verify(token, state.now_unix_s())?;
        crate::observe::record_account(caller.account_id);
        if let Some(limiters) = &state.limiters {
            limiters.check_account(caller.account_id)?;
        }
        Ok(caller)
    }
}

/// The token of an `Authorization: Bearer <token>` header (scheme case-insensitive).
pub(crate) fn bearer_token(parts: &Parts) -> Option<&str> {
    bearer_from_headers(&parts.headers)
}

/// The token of an `Authorization: Bearer <token>` header, from the headers alone.
pub(crate) fn bearer_from_headers(headers: &axum::http::HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// A new refresh token: what the client gets, and the only thing the store keeps.
pub struct RefreshToken {
    /// base64url without padding of `REFRESH_TOKEN_BYTES` random bytes.
    pub token: String,
    pub sha256: [u8; 32],
}

impl RefreshToken {
    pub fn generate() -> RefreshToken {
        let mut bytes = [0u8; REFRESH_TOKEN_BYTES];
        OsRng.fill_bytes(&mut bytes);
        let token = URL_SAFE_NO_PAD.encode(bytes);
        let sha256 = refresh_token_sha256(&token);
        RefreshToken { token, sha256 }
    }
}

/// The SHA-256 under which a refresh token is stored: of the token string as the
/// client holds it, so a later refresh call hashes exactly what it receives.
pub fn refresh_token_sha256(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
    const LOW_COST: Argon2Params = Argon2Params {
        m_kib: 64,
        t: 1,
        p: 1,
    };

    #[test]
    fn jwt_round_trip_and_expiry_follow_the_given_clock() {
        let keys = JwtKeys::new(SECRET, 900);
        let token = keys.issue(42, Role::Player, 1_000).expect("issue");
        let expected = AuthAccount {
            account_id: 42,
            role: Role::Player,
        };
        assert_eq!(keys.verify(&token, 1_000).expect("fresh"), expected);
        assert_eq!(keys.verify(&token, 1_899).expect("last second"), expected);
        assert!(matches!(
            keys.verify(&token, 1_900),
            Err(ApiError::Unauthorized)
        ));
        // Far in the system clock's past: still valid, because only `now_unix_s` counts.
        let old = keys.issue(7, Role::Admin, 10).expect("issue");
        assert_eq!(keys.verify(&old, 11).expect("valid").role, Role::Admin);
    }

    #[test]
    fn jwt_from_another_key_or_garbage_is_refused() {
        let keys = JwtKeys::new(SECRET, 900);
        let other = JwtKeys::new(b"another-secret-another-secret-!!", 900);
        let forged = other.issue(1, Role::Admin, 1_000).expect("issue");
        assert!(matches!(
            keys.verify(&forged, 1_000),
            Err(ApiError::Unauthorized)
        ));
        for garbage in [
            "",
            "a.b.c",
            "not a jwt",
            &"x".repeat(BEARER_TOKEN_BYTES_MAX + 1),
        ] {
            assert!(matches!(
                keys.verify(garbage, 1_000),
                Err(ApiError::Unauthorized)
            ));
        }
    }

    #[test]
    fn jwt_claims_are_the_documented_ones() {
        let keys = JwtKeys::new(SECRET, 60);
        let token = keys.issue(5, Role::Player, 100).expect("issue");
        let payload = token.split('.').nth(1).expect("payload");
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("base64url"))
                .expect("json");
        assert_eq!(claims["sub"], "5");
        assert_eq!(claims["role"], "player");
        assert_eq!(claims["iat"], 100);
        assert_eq!(claims["exp"], 160);
        assert!(claims["jti"].as_str().is_some_and(|jti| !jti.is_empty()));
    }

    #[test]
    fn bearer_header_parsing() {
        let parts = |value: Option<&str>| {
            let mut builder = axum::http::Request::builder();
            if let Some(value) = value {
                builder = builder.header(AUTHORIZATION, value);
            }
            builder.body(()).expect("request").into_parts().0
        };
        assert_eq!(bearer_token(&parts(Some("Bearer abc"))), Some("abc"));
        assert_eq!(bearer_token(&parts(Some("bearer  abc "))), Some("abc"));
        assert_eq!(bearer_token(&parts(Some("Basic abc"))), None);
        assert_eq!(bearer_token(&parts(Some("Bearer "))), None);
        assert_eq!(bearer_token(&parts(Some("Bearer"))), None);
        assert_eq!(bearer_token(&parts(None)), None);
    }

    #[test]
    fn refresh_tokens_are_random_and_stored_hashed() {
        let a = RefreshToken::generate();
        let b = RefreshToken::generate();
        assert_ne!(a.token, b.token);
        assert_eq!(
            URL_SAFE_NO_PAD.decode(&a.token).expect("base64url").len(),
            32
        );
        assert_eq!(a.sha256, refresh_token_sha256(&a.token));
        assert_ne!(&a.sha256[..], a.token.as_bytes());
    }

    #[tokio::test]
    async fn passwords_hash_and_verify() {
        let passwords = Passwords::new(LOW_COST, 2, 4).expect("params");
        let phc = passwords
            .hash("correct horse".to_owned())
            .await
            .expect("hash");
        assert!(phc.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{phc}");
        let ok = passwords.verify("correct horse".to_owned(), Some(phc.clone()));
        assert!(ok.await.expect("verify"));
        let wrong = passwords.verify("wrong horse".to_owned(), Some(phc));
        assert!(!wrong.await.expect("verify"));
        // Unknown user: verified against the dummy hash, never a match, even with its password.
        let unknown = passwords.verify(DUMMY_PASSWORD.to_owned(), None);
        assert!(!unknown.await.expect("verify"));
        let corrupt = passwords.verify("x".to_owned(), Some("not-a-phc".to_owned()));
        assert!(matches!(corrupt.await, Err(ApiError::Internal(_))));
    }

    #[tokio::test]
    async fn a_full_queue_answers_busy() {
        let passwords = Passwords::new(LOW_COST, 1, 0).expect("params");
        // Hold the only admission permit, as a request in flight would.
        let _held = passwords.admission.try_acquire().expect("permit");
        let refused = passwords.hash("password".to_owned()).await;
        assert!(matches!(refused, Err(ApiError::Busy { retry_after_s: 1 })));
    }

    #[test]
    fn bad_parameters_are_refused() {
        assert!(Passwords::new(LOW_COST, 0, 1).is_err());
        let too_little_memory = Argon2Params {
            m_kib: 1,
            t: 1,
            p: 1,
        };
        assert!(Passwords::new(too_little_memory, 1, 1).is_err());
    }
}
