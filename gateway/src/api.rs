//! The JSON shapes of the gateway's requests and `data` replies, and the input rules.
//!
//! For: one serde type per body, shared by the handlers and by clients (the CLI and
//! the load bots in `tools` parse replies with these), and the username/password
//! rules of registration. Not for: HTTP plumbing or store access.

use std::fmt;

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::error::ApiError;
use crate::game::{GameStatus, ShipStatsView};

/// Shortest username accepted, in characters.
pub const USERNAME_CHARS_MIN: usize = 3;
/// Longest username accepted, in characters.
pub const USERNAME_CHARS_MAX: usize = 32;
/// Shortest password accepted, in characters.
pub const PASSWORD_CHARS_MIN: usize = 8;
/// Longest password accepted, in characters: also bounds the work one login costs.
pub const PASSWORD_CHARS_MAX: usize = 128;

/// Body of `POST /api/auth/register` and `POST /api/auth/login`.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
pub struct Credentials {
    #[schema(min_length = 3, max_length = 32, pattern = "^[A-Za-z0-9_-]{3,32}$")]
    pub username: String,
    #[schema(min_length = 8, max_length = 128)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RegisterReply {
    pub account_id: i64,
    pub character_id: i64,
    pub ship_id: i64,
    pub username: String,
}

/// `data` of a 200 from `POST /api/auth/login`.
#[derive(Clone, PartialEq, Serialize, Deserialize, ToSchema)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ConnectTokenReply {
    /// Standard base64 (with padding) of `ConnectToken::to_bytes()`.
    pub connect_token: String,
    /// The UDP server, `ip:port`.
    pub server_address: String,
    pub protocol_id: u64,
    pub expires_at_unix_s: u64,
}

/// Most connect tokens one `POST /api/admin/connect-tokens` mints.
pub const BULK_TOKENS_MAX: u32 = 1000;

/// Body of `POST /api/admin/connect-tokens`: bot accounts `{username_prefix}{first}`
/// to `{username_prefix}{first + count - 1}`, created if missing, one token each.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BulkTokensRequest {
    /// Username prefix; with the largest index the names must be valid usernames.
    #[serde(alias = "usernamePrefix")]
    pub username_prefix: String,
    /// First index.
    #[serde(default)]
    #[schema(minimum = 0)]
    pub first: u32,
    #[schema(minimum = 1, maximum = 1000)]
    pub count: u32,
}

impl BulkTokensRequest {
    /// The usernames asked for, or a field error.
    ///
    /// # Errors
    /// `count` outside 1..=[`BULK_TOKENS_MAX`], indices past `u32::MAX`, or a name that
    /// is not a valid username.
    pub fn usernames(&self) -> Result<Vec<String>, ApiError> {
        if !(1..=BULK_TOKENS_MAX).contains(&self.count) {
            return Err(ApiError::invalid_field("count", "must be 1-1000"));
        }
        let last = self
            .first
            .checked_add(self.count - 1)
            .ok_or_else(|| ApiError::invalid_field("first", "first + count overflows"))?;
        // The shortest and the longest names decide validity for the whole range.
        for index in [self.first, last] {
            validate_username(&format!("{}{index}", self.username_prefix)).map_err(|_| {
                ApiError::invalid_field(
                    "username_prefix",
                    "prefix + index must be 3-32 characters of A-Z, a-z, 0-9, '_' and '-'",
                )
            })?;
        }
        Ok((self.first..=last)
            .map(|i| format!("{}{i}", self.username_prefix))
            .collect())
    }
}

/// One bot's token in a [`BulkTokensReply`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BulkToken {
    pub username: String,
    pub account_id: i64,
    /// Standard base64 (with padding) of `ConnectToken::to_bytes()`.
    pub connect_token: String,
}

/// `data` of a 200 from `POST /api/admin/connect-tokens`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BulkTokensReply {
    /// In the order of the indices asked for.
    pub tokens: Vec<BulkToken>,
    /// Bot accounts created by this request (the rest existed).
    pub created: u32,
    /// The UDP server, `ip:port`.
    pub server_address: String,
    pub protocol_id: u64,
    pub expires_at_unix_s: u64,
}

/// `data` of a 200 from `GET /health`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HealthReply {
    /// `"ok"`, or `"degraded"` when the engine is attached but not ticking.
    pub status: String,
    /// `"ok"` (a 503 answers an unreachable database).
    pub database: String,
    /// The engine's state; `null` when no game is attached to this gateway.
    #[serde(default)]
    pub engine: Option<GameStatus>,
}

/// Longest refresh token accepted in a body: ours are 43 characters.
pub const REFRESH_TOKEN_CHARS_MAX: usize = 128;

/// Body of `POST /api/auth/refresh` and `POST /api/auth/logout`.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
pub struct RefreshRequest {
    #[serde(alias = "refreshToken")]
    #[schema(min_length = 1, max_length = 128)]
    pub refresh_token: String,
}

/// The token is left out so that logging a request never leaks it.
impl fmt::Debug for RefreshRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RefreshRequest")
            .field("refresh_token", &"<redacted>")
            .finish()
    }
}

impl RefreshRequest {
    /// # Errors
    /// `InvalidInput` naming `refresh_token` when it is empty or too long.
    pub fn validate(&self) -> Result<(), ApiError> {
        let n = self.refresh_token.len();
        if n == 0 || n > REFRESH_TOKEN_CHARS_MAX {
            return Err(ApiError::invalid_field(
                "refresh_token",
                "must be 1-128 characters",
            ));
        }
        Ok(())
    }
}

/// `data` of a 200 from `POST /api/auth/logout`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LogoutReply {
    /// Whether a token family was found and revoked (false: already unknown).
    pub revoked: bool,
}

/// A module type, as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ModuleView {
    pub module_type_id: i64,
    pub name: String,
    /// `"high"`, `"mid"` or `"low"`.
    pub slot_kind: String,
    pub mass_kg: f64,
    pub max_speed_bonus_pct: f64,
    pub accel_bonus_pct: f64,
    pub hit_points_bonus: f64,
}

/// A ship hull's base stats.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HullView {
    pub hull_name: String,
    pub mass_kg: f64,
    pub max_speed_mps: f64,
    pub accel_mps2: f64,
    pub hit_points: f64,
}

/// `data` of `GET /api/ship/{id}/stats`: base stats, fitted modules, derived stats.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ShipStatsReply {
    pub ship_id: i64,
    pub name: String,
    pub base: HullView,
    /// Fitted modules in slot order.
    pub modules: Vec<ModuleView>,
    pub stats: ShipStatsView,
}

/// A module in a slot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FittedView {
    /// Slot index, `0..slots_max`; also the `moduleId` of `DELETE .../modules/{moduleId}`.
    pub slot: i64,
    pub module: ModuleView,
}

/// `data` of `GET /api/ship/{id}/fitting`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FittingReply {
    pub ship_id: i64,
    pub slots_max: i64,
    pub modules: Vec<FittedView>,
}

/// Body of `POST /api/ship/{id}/modules`: fit one module of this type, taken from the
/// ship's cargo or a station hangar of its owner, into a free slot.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FitRequest {
    #[serde(alias = "moduleTypeId")]
    pub module_type_id: i64,
    pub slot: i64,
}

/// `data` of a fit or unfit: the new fitting and the stats it gives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FitReply {
    pub fitting: FittingReply,
    pub stats: ShipStatsView,
    /// For an unfit: the cargo stack the module went to.
    pub stack_id: Option<i64>,
}

/// Where a stack is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LocationKind {
    /// A station hangar; `id` is the station.
    Station,
    /// A ship's cargo hold; `id` is the ship.
    Ship,
}

/// A place items can be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LocationView {
    pub kind: LocationKind,
    pub id: i64,
}

/// A stack of items.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StackView {
    pub stack_id: i64,
    pub item_type_id: i64,
    pub quantity: i64,
    pub location: LocationView,
}

/// `data` of `GET /api/inventory/{characterId}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct InventoryReply {
    pub character_id: i64,
    pub stacks: Vec<StackView>,
}

/// Body of `POST /api/inventory/transfer`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TransferRequest {
    #[serde(alias = "characterId")]
    pub character_id: i64,
    #[serde(alias = "stackId")]
    pub stack_id: i64,
    pub quantity: i64,
    /// Where the caller believes the stack is: a stale view is 409.
    pub from: LocationView,
    pub to: LocationView,
}

/// `data` of a transfer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TransferReply {
    /// The stack that now holds the moved items.
    pub stack_id: i64,
}

/// A ship the caller owns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ShipSummary {
    pub ship_id: i64,
    pub character_id: i64,
    pub name: String,
    pub hull_name: String,
    pub x_m: f64,
    pub y_m: f64,
}

/// `data` of `GET /api/inventory/ships`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ShipsReply {
    pub ships: Vec<ShipSummary>,
}

/// A star system.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SystemView {
    pub system_id: i64,
    pub name: String,
    pub x_m: f64,
    pub y_m: f64,
}

/// `data` of `GET /api/universe/systems`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SystemsReply {
    pub systems: Vec<SystemView>,
}

/// A station.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StationView {
    pub station_id: i64,
    pub system_id: i64,
    pub name: String,
    pub x_m: f64,
    pub y_m: f64,
}

/// Stations returned per page unless `limit` says otherwise.
pub const STATIONS_PAGE_DEFAULT: u32 = 50;
/// Largest `limit` accepted.
pub const STATIONS_PAGE_MAX: u32 = 200;

/// Query of `GET /api/universe/stations`: keyset pagination by station id.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StationsQuery {
    /// Return stations with an id above this (the previous page's `next_after_id`).
    pub after_id: Option<i64>,
    /// Page size, 1-200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<u32>,
}

/// `data` of `GET /api/universe/stations`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StationsReply {
    pub stations: Vec<StationView>,
    /// Pass as `after_id` for the next page; `null` on the last page.
    pub next_after_id: Option<i64>,
}

/// Body of `POST /api/navigation/warp`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WarpRequest {
    #[serde(alias = "shipId")]
    pub ship_id: i64,
    #[serde(alias = "systemId")]
    pub system_id: i64,
}

/// `data` of an accepted warp: the engine has the command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WarpReply {
    pub ship_id: i64,
    pub system_id: i64,
    pub accepted: bool,
}

/// Most checks one `POST /health/batch` may ask for.
pub const HEALTH_BATCH_CHECKS_MAX: usize = 16;

/// A check `POST /health/batch` can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum HealthCheckName {
    Database,
    Engine,
    Gateway,
}

/// Body of `POST /health/batch`: which checks to run.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HealthBatchRequest {
    #[schema(min_items = 1, max_items = 16)]
    pub checks: Vec<HealthCheckName>,
}

/// One check's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HealthCheckResult {
    pub name: HealthCheckName,
    pub ok: bool,
    pub detail: String,
}

/// `data` of `POST /health/batch`, in the order asked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HealthBatchReply {
    pub results: Vec<HealthCheckResult>,
}

/// Longest admin broadcast, in characters.
pub const BROADCAST_CHARS_MAX: usize = 500;

/// Body of `POST /api/admin/broadcast`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BroadcastRequest {
    #[schema(min_length = 1, max_length = 500)]
    pub text: String,
}

/// `data` of a broadcast.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BroadcastReply {
    pub recipients: u64,
}

/// Body of `POST /api/admin/kick`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct KickRequest {
    #[serde(alias = "accountId")]
    pub account_id: i64,
}

/// `data` of a kick.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct KickReply {
    /// Whether the player was connected.
    pub kicked: bool,
}

/// `data` of `POST /api/admin/ships/{id}/destroy`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DestroyShipReply {
    /// The ship destroyed.
    pub ship_id: i64,
}

/// `data` of `GET /api/admin/players`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct OnlinePlayersReply {
    pub players: Vec<crate::game::OnlinePlayer>,
}

/// `data` of `GET /api/admin/sectors`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SectorLoadReply {
    pub sectors: Vec<crate::game::SectorLoad>,
}

/// Body of `POST /api/admin/accounts/{id}/role`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RoleRequest {
    /// `"player"` or `"admin"`.
    #[schema(pattern = "^(player|admin)$")]
    pub role: String,
}

/// `data` of `GET /internal/accounts/{id}` and of a role change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AccountReply {
    pub account_id: i64,
    pub username: String,
    pub role: String,
}

/// Longest `reason` of an internal grant, in characters.
pub const GRANT_REASON_CHARS_MAX: usize = 200;

/// Body of `POST /internal/items/grant` (loot, purchases: trusted services only).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct GrantRequest {
    pub character_id: i64,
    pub item_type_id: i64,
    pub quantity: i64,
    pub location: LocationView,
    #[schema(min_length = 1, max_length = 200)]
    pub reason: String,
}

/// Body of `POST /api/crafting/jobs`: `quantity` runs of a recipe, paid from the
/// character's items wherever they are (oldest stacks first).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CraftingStartRequest {
    #[serde(alias = "characterId")]
    pub character_id: i64,
    #[serde(alias = "recipeId")]
    pub recipe_id: i64,
    #[schema(minimum = 1, maximum = 100)]
    pub quantity: i64,
}

/// Where a crafting job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CraftingJobState {
    /// Waiting or in progress.
    Queued,
    /// The product was delivered to `station_id`.
    Completed,
    /// The materials were refunded to `station_id`.
    Cancelled,
}

/// A crafting job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CraftingJobView {
    pub job_id: i64,
    pub character_id: i64,
    pub recipe_id: i64,
    pub quantity: i64,
    /// Game seconds of work for the whole job.
    pub duration_s: f64,
    pub status: CraftingJobState,
    /// The hangar the product (or refund) goes to.
    pub station_id: i64,
    pub created_at_unix_ms: i64,
    pub finished_at_unix_ms: Option<i64>,
    /// For a queued job: its place in the character's queue, 0 = in progress.
    pub queue_position: Option<u16>,
}

/// `data` of a 201 from `POST /api/crafting/jobs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CraftingStartReply {
    pub job: CraftingJobView,
    /// Place in the engine's queue, 0 = in progress.
    pub queue_position: u16,
}

/// `data` of `GET /api/crafting/jobs/{character_id}`: every queued job (queue
/// order) and the most recent finished ones, by job id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CraftingJobsReply {
    pub character_id: i64,
    pub jobs: Vec<CraftingJobView>,
}

/// `data` of `DELETE /api/crafting/jobs/{job_id}`: the cancelled job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CraftingCancelReply {
    pub job: CraftingJobView,
}

/// One input of a recipe, per run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RecipeInputView {
    pub item_type_id: i64,
    pub quantity: i64,
}

/// A recipe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RecipeView {
    pub recipe_id: i64,
    pub name: String,
    pub output_item_type_id: i64,
    /// Items made per run.
    pub output_quantity: i64,
    /// Game seconds per run.
    pub duration_s: f64,
    pub inputs: Vec<RecipeInputView>,
}

/// `data` of `GET /api/crafting/recipes`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RecipesReply {
    pub recipes: Vec<RecipeView>,
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
