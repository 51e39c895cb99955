//! The `Store` trait: every durable read and write warpcore makes, as one async
//! interface that both backends (SQLite now, PostgreSQL later) implement.
//!
//! Why async: the PostgreSQL backend will be `tokio-postgres`, which is async. The
//! SQLite backend fits the same trait by running each call on tokio's blocking pool
//! (`spawn_blocking`), so callers (the gateway's handlers, the write-behind task,
//! the server's start-up) never block a runtime worker on disk I/O. The trait is
//! object safe (`Arc<dyn Store>`) through `async_trait`.
//!
//! Not for: SQL. Only the backends know SQL; these types are plain data.
//! Time is passed in (`*_unix_ms` arguments): nothing here reads the clock.

use async_trait::async_trait;

/// Account primary key.
pub type AccountId = i64;
/// Character primary key.
pub type CharacterId = i64;
/// Ship primary key. A ship in space is a world entity whose entity id is its ship id.
pub type ShipId = i64;

/// What a store call can fail with. An I/O or driver failure (`Unavailable`,
/// `Backend`) is kept apart from a logical "no" (`Conflict`, `NotFound`), so the
/// gateway can answer 409/404 and the write-behind queue knows what to retry.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A uniqueness rule refused the write (e.g. the username is taken).
    #[error("conflict: {0}")]
    Conflict(String),
    /// A row the call needs does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The database file or server is unreachable, busy or locked: worth retrying.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The schema in the database is newer than this binary knows.
    #[error("database schema version {found} is newer than this build supports ({supported}); upgrade warpcore")]
    SchemaTooNew { found: i64, supported: i64 },
    /// Any other backend error (bad SQL, constraint, corrupt data): not worth retrying.
    #[error("database error: {0}")]
    Backend(String),
}

/// A new account to create, with its password already hashed (argon2id PHC string).
#[derive(Debug, Clone)]
pub struct NewAccount {
    pub username: String,
    pub password_hash: String,
    pub created_at_unix_ms: i64,
}

/// An account row.
#[derive(Debug, Clone, PartialEq)]
pub struct Account {
    pub id: AccountId,
    pub username: String,
    pub password_hash: String,
    /// "player" or "admin".
    pub role: String,
    pub created_at_unix_ms: i64,
}

/// What registration created, in one transaction: the account, its character, and
/// the character's starter ship undocked next to a station, with a world state row.
#[derive(Debug, Clone, PartialEq)]
pub struct Registered {
    pub account_id: AccountId,
    pub character_id: CharacterId,
    pub ship_id: ShipId,
}

/// A star system. Coordinates are galaxy metres in the one plane the engine's sectors tile.
#[derive(Debug, Clone, PartialEq)]
pub struct StarSystem {
    pub id: i64,
    pub name: String,
    pub x_m: f64,
    pub y_m: f64,
}

/// A station inside a star system, at galaxy coordinates.
#[derive(Debug, Clone, PartialEq)]
pub struct Station {
    pub id: i64,
    pub system_id: i64,
    pub name: String,
    pub x_m: f64,
    pub y_m: f64,
}

/// A module type (the catalogue). Bonuses add to the hull's base stats.
#[derive(Debug, Clone, PartialEq)]
pub struct ModuleType {
    pub id: i64,
    pub name: String,
    /// "high", "mid" or "low".
    pub slot_kind: String,
    pub mass_kg: f64,
    pub max_speed_bonus_pct: f64,
    pub accel_bonus_pct: f64,
    pub hit_points_bonus: f64,
}

/// A ship's hull base stats (the Echoes "ship base stats").
#[derive(Debug, Clone, PartialEq)]
pub struct HullStats {
    pub hull_name: String,
    pub mass_kg: f64,
    pub max_speed_mps: f64,
    pub accel_mps2: f64,
    pub hit_points: f64,
}

/// The durable part of a world entity's state, as the write-behind queue writes it.
/// Coalesced by `entity_id`: a later state for the same entity replaces an earlier one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EntityState {
    /// The ship id for ships.
    pub entity_id: i64,
    pub x_m: f64,
    pub y_m: f64,
    pub vx_mps: f64,
    pub vy_mps: f64,
    /// Engine tick that produced this state (monotonic per entity).
    pub tick: u64,
}

/// Everything the engine needs to put a ship in the world.
#[derive(Debug, Clone, PartialEq)]
pub struct ShipRecord {
    pub ship_id: ShipId,
    pub account_id: AccountId,
    pub character_id: CharacterId,
    pub name: String,
    pub hull: HullStats,
    /// Fitted modules, in slot order.
    pub modules: Vec<ModuleType>,
    /// Last flushed world state.
    pub state: EntityState,
}

/// Every durable read and write warpcore makes. See the module docs for why it is async.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// A cheap round trip to the database, for `/health`.
    async fn health(&self) -> Result<(), StoreError>;

    /// Seeds the demo universe (star systems, stations, module types) if the store
    /// has none yet. Returns whether it seeded. Idempotent.
    async fn seed_demo_content(&self) -> Result<bool, StoreError>;

    /// Creates the account, its character and a starter ship (with fitted starter
    /// modules and a world state next to a station) in one transaction.
    ///
    /// # Errors
    /// `Conflict` if the username is taken.
    async fn register_account(&self, new: NewAccount) -> Result<Registered, StoreError>;

    /// The account with this username, if any.
    async fn account_by_username(&self, username: &str) -> Result<Option<Account>, StoreError>;

    /// Stores a refresh token by its SHA-256 hash (the token itself is never stored).
    async fn insert_refresh_token(
        &self,
        account_id: AccountId,
        token_sha256: [u8; 32],
        expires_at_unix_ms: i64,
    ) -> Result<(), StoreError>;

    /// The account's active ship, with stats inputs and last flushed state.
    async fn active_ship(&self, account_id: AccountId) -> Result<Option<ShipRecord>, StoreError>;

    /// Every ship in space, to load the world on start. Ordered by ship id.
    async fn load_world(&self) -> Result<Vec<ShipRecord>, StoreError>;

    /// Upserts world entity states in one transaction (the write-behind flush).
    /// Either every row is written or none is.
    async fn write_entity_states(&self, states: &[EntityState]) -> Result<(), StoreError>;

    /// All star systems, ordered by id.
    async fn star_systems(&self) -> Result<Vec<StarSystem>, StoreError>;

    /// All stations, ordered by id.
    async fn stations(&self) -> Result<Vec<Station>, StoreError>;
}
