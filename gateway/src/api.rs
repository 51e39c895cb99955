//! The JSON shapes of the gateway's requests and `data` replies, and the input rules.
//!
//! For: one serde type per body, shared by the handlers and by clients (the CLI and
//! the load bots in `tools` parse replies with these), and the username/password
//! rules of registration. Not for: HTTP plumbing or store access.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::ApiError;

/// Shortest username accepted, in characters.
pub const USERNAME_CHARS_MIN: usize = 3;
/// Longest username accepted, in characters.
pub const USERNAME_CHARS_MAX: usize = 32;
/// Shortest password accepted, in characters.
pub const PASSWORD_CHARS_MIN: usize = 8;
/// Longest password accepted, in characters: also bounds the work one login costs.
pub const PASSWORD_CHARS_MAX: usize = 128;

/// Body of `POST /api/auth/register` and `POST /api/auth/login`.
#[derive(Clone, Serialize, Deserialize)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

/// The password is left out so that logging a request never leaks it.
impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl Credentials {
    /// Checks the registration rules: username 3-32 characters of `[A-Za-z0-9_-]`,
    /// password 8-128 characters.
    ///
    /// # Errors
    /// `InvalidInput` whose `details.field` names the first field that breaks a rule.
    pub fn validate(&self) -> Result<(), ApiError> {
        validate_username(&self.username)?;
        validate_password(&self.password)
    }
}

fn validate_username(username: &str) -> Result<(), ApiError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    let n_chars = username.chars().count();
    if !(USERNAME_CHARS_MIN..=USERNAME_CHARS_MAX).contains(&n_chars)
        || !username.chars().all(allowed)
    {
        return Err(ApiError::invalid_field(
            "username",
            "must be 3-32 characters of A-Z, a-z, 0-9, '_' and '-'",
        ));
    }
    Ok(())
}

fn validate_password(password: &str) -> Result<(), ApiError> {
    let n_chars = password.chars().count();
    if !(PASSWORD_CHARS_MIN..=PASSWORD_CHARS_MAX).contains(&n_chars) {
        return Err(ApiError::invalid_field(
            "password",
            "must be 8-128 characters",
        ));
    }
    Ok(())
}

/// `data` of a 201 from `POST /api/auth/register`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegisterReply {
    pub account_id: i64,
    pub character_id: i64,
    pub ship_id: i64,
    pub username: String,
}

/// `data` of a 200 from `POST /api/auth/login`.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct LoginReply {
    /// HS256 JWT for `Authorization: Bearer`.
    pub access_token: String,
    /// Always `"Bearer"`.
    pub token_type: String,
    pub expires_in_s: u64,
    /// 32 random bytes, base64url without padding; the server keeps only its SHA-256.
    pub refresh_token: String,
    pub account_id: i64,
}

/// Tokens are left out so that logging a reply never leaks them.
impl fmt::Debug for LoginReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoginReply")
            .field("access_token", &"<redacted>")
            .field("token_type", &self.token_type)
            .field("expires_in_s", &self.expires_in_s)
            .field("refresh_token", &"<redacted>")
            .field("account_id", &self.account_id)
            .finish()
    }
}

/// `data` of a 200 from `POST /api/session/connect-token`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnectTokenReply {
    /// Standard base64 (with padding) of `ConnectToken::to_bytes()`.
    pub connect_token: String,
    /// The UDP server, `ip:port`.
    pub server_address: String,
    pub protocol_id: u64,
    pub expires_at_unix_s: u64,
}

/// `data` of a 200 from `GET /health`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthReply {
    pub status: String,
    pub database: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(error: ApiError) -> String {
        let details = error.body().details.expect("details");
        details["field"].as_str().expect("field").to_owned()
    }

    fn credentials(username: &str, password: &str) -> Credentials {
        Credentials {
            username: username.to_owned(),
            password: password.to_owned(),
        }
    }

    #[test]
    fn usernames() {
        for ok in ["abc", "Pilot_01", "a-b", &"x".repeat(32)] {
            assert!(credentials(ok, "password1").validate().is_ok(), "{ok}");
        }
        for bad in [
            "ab",
            "",
            &"x".repeat(33),
            "has space",
            "émile",
            "a;b",
            "név",
        ] {
            let error = credentials(bad, "password1").validate().expect_err(bad);
            assert_eq!(field_of(error), "username", "{bad}");
        }
    }

    #[test]
    fn passwords_count_characters_not_bytes() {
        assert!(credentials("pilot", "12345678").validate().is_ok());
        assert!(credentials("pilot", &"é".repeat(128)).validate().is_ok());
        for bad in ["1234567", &"p".repeat(129), &"é".repeat(129)] {
            let error = credentials("pilot", bad)
                .validate()
                .expect_err("too short or long");
            assert_eq!(field_of(error), "password");
        }
    }

    #[test]
    fn debug_hides_secrets() {
        let printed = format!("{:?}", credentials("pilot", "hunter2hunter2"));
        assert!(!printed.contains("hunter2"));
        let reply = LoginReply {
            access_token: "jwt-secret-part".into(),
            token_type: "Bearer".into(),
            expires_in_s: 900,
            refresh_token: "refresh-secret-part".into(),
            account_id: 1,
        };
        let printed = format!("{reply:?}");
        assert!(!printed.contains("secret-part"));
    }
}
