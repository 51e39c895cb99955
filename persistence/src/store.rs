//! The `Store` trait: every durable read and write warpcore makes, as one async
//! interface that both backends (SQLite and PostgreSQL) implement.
//!
//! Two kinds of writes go through it. World state (`write_entity_states`) is written
//! behind the simulation by the write-behind queue, which may lose the last flush
//! interval in a crash. Everything else (accounts, refresh tokens, inventory, fitting,
//! the audit log) is a transaction committed before the call returns: once a call
//! answers `Ok`, a process crash cannot undo it, and concurrent conflicting calls
//! cannot duplicate or lose an item (the loser gets `Conflict` or `NotFound`).
//!
//! Why async: the PostgreSQL backend is `tokio-postgres`, which is async. The
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
    /// The request breaks a game rule whatever the database state (a quantity of 0, a
    /// slot index out of range, a transfer to where the items already are).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// A crafting job needs more of an item than the character has (summed over
    /// every stack it owns, wherever it is). Nothing was taken.
    #[error("insufficient materials: item type {item_type_id} needs {needed}, have {have}")]
    InsufficientMaterials {
        item_type_id: i64,
        needed: i64,
        have: i64,
    },
    /// This `Store` implementation (a test double or a wrapper) does not implement the
    /// named call. Both real backends implement every call.
    #[error("{0} is not supported by this store")]
    Unsupported(&'static str),
}

impl StoreError {
    /// Whether trying the same call again later can succeed (the database was
    /// unreachable, busy or locked). Every other error is a property of the request
    /// and the data: retrying it gives the same answer.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
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
///
/// A state with `removed` set is a removal: the entity left the world at `tick` (a
/// destroyed ship). It travels the same queue and log as the states, so it is ordered
/// with them by tick (a state older than the removal cannot bring the entity back, a
/// newer one, a respawn with the same id, can), and once flushed every reader stops
/// seeing the entity; compaction deletes its `world_entities` row. Its other fields are
/// only kept for the log and the dead letters.
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
    /// Hit points left (damage persists across restarts).
    pub hit_points: f64,
    /// The entity left the world at `tick` (see the type's docs).
    pub removed: bool,
}

impl EntityState {
    /// The removal of `entity_id` at `tick` (a destroyed ship): written by the flush
    /// like a state, it takes the entity out of every reader's world.
    pub fn removal(entity_id: i64, tick: u64) -> EntityState {
        EntityState {
            entity_id,
            x_m: 0.0,
            y_m: 0.0,
            vx_mps: 0.0,
            vy_mps: 0.0,
            tick,
            hit_points: 0.0,
            removed: true,
        }
    }
}

/// Item stack primary key.
pub type ItemStackId = i64;

/// Most module slots a ship has; slot indexes are `0..SHIP_SLOTS_MAX`.
pub const SHIP_SLOTS_MAX: i64 = 8;
/// Most rows one `audit_log` read returns.
pub const AUDIT_READ_ROWS_MAX: usize = 10_000;
/// Most rows one `dead_letters` read returns.
pub const DEAD_LETTER_READ_ROWS_MAX: usize = 10_000;

/// Where a stack of items is: in a station's hangar or in a ship's cargo hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ItemLocation {
    Station(i64),
    ShipCargo(ShipId),
}

/// A stack of identical items owned by one character. The item catalogue today is the
/// module catalogue, so `item_type_id` is a [`ModuleType`] id. Quantities are > 0: an
/// emptied stack is deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ItemStack {
    pub id: ItemStackId,
    pub character_id: CharacterId,
    pub item_type_id: i64,
    pub quantity: i64,
    pub location: ItemLocation,
}

/// Creates a new stack (loot, a purchase, an admin grant, crafting output).
#[derive(Debug, Clone, PartialEq)]
pub struct GrantItems {
    pub character_id: CharacterId,
    pub item_type_id: i64,
    pub quantity: i64,
    pub location: ItemLocation,
    /// Why, for the audit log.
    pub reason: String,
    pub at_unix_ms: i64,
}

/// Moves `quantity` items of one stack from `from` to `to`. Moving the whole stack
/// keeps its id; moving part of it splits off a new stack at `to`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ItemTransfer {
    pub character_id: CharacterId,
    pub stack_id: ItemStackId,
    pub quantity: i64,
    /// Where the caller believes the stack is: a stale view is a `Conflict`.
    pub from: ItemLocation,
    pub to: ItemLocation,
    pub at_unix_ms: i64,
}

/// Fits one module taken from a stack (in the ship's cargo or a station hangar of
/// the same character) into an empty slot of the character's ship.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FitModule {
    pub character_id: CharacterId,
    pub ship_id: ShipId,
    pub slot_index: i64,
    pub stack_id: ItemStackId,
    pub at_unix_ms: i64,
}

/// Takes the module out of a slot of the character's ship into the ship's cargo.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UnfitModule {
    pub character_id: CharacterId,
    pub ship_id: ShipId,
    pub slot_index: i64,
    pub at_unix_ms: i64,
}

/// A module in a slot.
#[derive(Debug, Clone, PartialEq)]
pub struct FittedModule {
    pub slot_index: i64,
    pub module: ModuleType,
}

/// A security or economy event to append to the audit log (`kind` like
/// `"auth.login_failed"`, `"inventory.transfer"`; `detail` free text, no secrets).
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEvent {
    pub at_unix_ms: i64,
    pub account_id: Option<AccountId>,
    pub kind: String,
    pub detail: String,
}

/// An audit log row.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEntry {
    pub id: i64,
    pub event: AuditEvent,
}

/// A world state the write-behind queue could never write, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    pub state: EntityState,
    pub error: String,
}

/// A `dead_letters` row. The state is kept as text: the reason it could not be
/// written may be that one of its values does not fit a column.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredDeadLetter {
    pub id: i64,
    pub entity_id: i64,
    pub payload: String,
    pub error: String,
}

impl DeadLetter {
    /// The state as the text stored in `dead_letters.payload`.
    pub fn payload(&self) -> String {
        let s = &self.state;
        format!(
            "entity_id={} tick={} x_m={:?} y_m={:?} vx_mps={:?} vy_mps={:?} hit_points={:?} removed={}",
            s.entity_id, s.tick, s.x_m, s.y_m, s.vx_mps, s.vy_mps, s.hit_points, s.removed
        )
    }
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

/// Most ships one `ships_of_account` read returns.
pub const SHIPS_READ_ROWS_MAX: usize = 1_000;
/// Most stations one `stations_page` read returns.
pub const STATIONS_PAGE_ROWS_MAX: usize = 500;

/// One use of a refresh token: the presented token (by hash) is exchanged for a new
/// one in the same family, valid until `new_expires_at_unix_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefreshRotation {
    pub old_sha256: [u8; 32],
    pub new_sha256: [u8; 32],
    pub now_unix_ms: i64,
    pub new_expires_at_unix_ms: i64,
}

/// Why a presented refresh token was not exchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshRejection {
    /// No token has this hash.
    Unknown,
    /// The token (or its family) was revoked: by logout or by reuse detection.
    Revoked,
    /// The token's lifetime is over.
    Expired,
}

/// What [`Store::rotate_refresh_token`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshOutcome {
    /// The old token is now used; the new one is stored in the same family.
    Rotated { account_id: AccountId },
    /// The token had already been used once: someone holds a copy. Every token of
    /// its family is now revoked, committed before returning.
    ReuseDetected { account_id: AccountId },
    /// Nothing changed.
    Rejected(RefreshRejection),
}

/// Recipe primary key.
pub type RecipeId = i64;
/// Crafting job primary key (also the engine's job id).
pub type CraftingJobId = i64;

/// Most crafting jobs one character may have queued (the one in progress included);
/// the engine's per-player queue holds as many.
pub const CRAFTING_QUEUE_JOBS_MAX: i64 = 16;
/// Most runs of a recipe one job may ask for.
pub const CRAFTING_QUANTITY_MAX: i64 = 100;
/// Most finished (completed or cancelled) jobs one `crafting_jobs` read returns,
/// besides every queued one.
pub const CRAFTING_FINISHED_READ_ROWS_MAX: usize = 50;
/// Most rows one `queued_crafting_jobs` read returns.
pub const CRAFTING_QUEUED_READ_ROWS_MAX: usize = 10_000;

/// One input of a recipe: `quantity` items of `item_type_id` per run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecipeInput {
    pub item_type_id: i64,
    pub quantity: i64,
}

/// A recipe of the catalogue: one run consumes `inputs` and, after `duration_s` game
/// seconds, makes `output_quantity` items of `output_item_type_id`.
#[derive(Debug, Clone, PartialEq)]
pub struct Recipe {
    pub id: RecipeId,
    pub name: String,
    pub output_item_type_id: i64,
    pub output_quantity: i64,
    /// Game seconds per run.
    pub duration_s: f64,
    /// By item type id.
    pub inputs: Vec<RecipeInput>,
}

/// Where a crafting job is in its life. `Queued` is the only state that changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CraftingJobStatus {
    /// Materials taken; waiting or in progress in the engine.
    Queued,
    /// The product was granted.
    Completed,
    /// The materials were refunded.
    Cancelled,
}

impl CraftingJobStatus {
    /// The `crafting_jobs.status` text.
    pub fn as_str(self) -> &'static str {
        match self {
            CraftingJobStatus::Queued => "queued",
            CraftingJobStatus::Completed => "completed",
            CraftingJobStatus::Cancelled => "cancelled",
        }
    }

    /// Parses `crafting_jobs.status`.
    ///
    /// # Errors
    /// `Backend` for any other text (the table's CHECK forbids it: corrupt data).
    pub fn parse(text: &str) -> Result<CraftingJobStatus, StoreError> {
        match text {
            "queued" => Ok(CraftingJobStatus::Queued),
            "completed" => Ok(CraftingJobStatus::Completed),
            "cancelled" => Ok(CraftingJobStatus::Cancelled),
            other => Err(StoreError::Backend(format!(
                "crafting job with status {other:?}"
            ))),
        }
    }
}

/// A `crafting_jobs` row.
#[derive(Debug, Clone, PartialEq)]
pub struct CraftingJobRecord {
    pub id: CraftingJobId,
    pub account_id: AccountId,
    pub character_id: CharacterId,
    pub recipe_id: RecipeId,
    /// Runs of the recipe.
    pub quantity: i64,
    /// Game seconds of work for the whole job (runs x the recipe's duration).
    pub duration_s: f64,
    pub status: CraftingJobStatus,
    /// The station hangar the product (or the refund) is delivered to: the
    /// character's home station when the job started.
    pub station_id: i64,
    pub created_at_unix_ms: i64,
    /// When it completed or was cancelled.
    pub finished_at_unix_ms: Option<i64>,
}

/// Starts a crafting job: `quantity` runs of a recipe for a character of the account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartCrafting {
    pub account_id: AccountId,
    pub character_id: CharacterId,
    pub recipe_id: RecipeId,
    pub quantity: i64,
    pub at_unix_ms: i64,
}

/// What [`Store::complete_crafting_job`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum CraftingCompletion {
    /// The product was granted now, in the same transaction as the status change.
    Completed(CraftingJobRecord),
    /// The job had already been completed: nothing was granted again.
    AlreadyCompleted(CraftingJobRecord),
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

    /// The account's active ship, with stats inputs and last flushed state; `None` if
    /// the account has none in space (none at all, or it was destroyed: removed by a
    /// flush, see [`EntityState::removal`]).
    async fn active_ship(&self, account_id: AccountId) -> Result<Option<ShipRecord>, StoreError>;

    /// Every ship in space, to load the world on start. Ordered by ship id.
    async fn load_world(&self) -> Result<Vec<ShipRecord>, StoreError>;

    /// Upserts world entity states, and applies removals, in one transaction (the
    /// write-behind flush). Either every row is written or none is.
    async fn write_entity_states(&self, states: &[EntityState]) -> Result<(), StoreError>;

    /// All star systems, ordered by id.
    async fn star_systems(&self) -> Result<Vec<StarSystem>, StoreError>;

    /// All stations, ordered by id.
    async fn stations(&self) -> Result<Vec<Station>, StoreError>;

    // Every call below has a default answer of `Unsupported`, so that wrappers and test
    // doubles written before it existed keep compiling; both backends implement all.

    /// The highest migration version applied to this database.
    ///
    /// # Errors
    /// As any store read.
    async fn schema_version(&self) -> Result<i64, StoreError> {
        Err(StoreError::Unsupported("schema_version"))
    }

    /// Every `world_entities` row, ordered by entity id (tests and diagnostics; the
    /// engine loads ships through [`Store::load_world`]).
    ///
    /// # Errors
    /// As any store read.
    async fn entity_states(&self) -> Result<Vec<EntityState>, StoreError> {
        Err(StoreError::Unsupported("entity_states"))
    }

    /// Appends world states that can never be written to `dead_letters`, with their
    /// errors, in one transaction.
    ///
    /// # Errors
    /// As any store write.
    async fn write_dead_letters(&self, letters: &[DeadLetter]) -> Result<(), StoreError> {
        let _ = letters;
        Err(StoreError::Unsupported("write_dead_letters"))
    }

    /// The first `limit` (at most [`DEAD_LETTER_READ_ROWS_MAX`]) dead letters, by id.
    ///
    /// # Errors
    /// As any store read.
    async fn dead_letters(&self, limit: usize) -> Result<Vec<StoredDeadLetter>, StoreError> {
        let _ = limit;
        Err(StoreError::Unsupported("dead_letters"))
    }

    /// Appends one event to the audit log, committed before returning.
    ///
    /// # Errors
    /// As any store write.
    async fn record_audit(&self, event: AuditEvent) -> Result<(), StoreError> {
        let _ = event;
        Err(StoreError::Unsupported("record_audit"))
    }

    /// Audit rows with `id > after_id`, oldest first, at most `limit` (capped at
    /// [`AUDIT_READ_ROWS_MAX`]).
    ///
    /// # Errors
    /// As any store read.
    async fn audit_log(&self, after_id: i64, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        let _ = (after_id, limit);
        Err(StoreError::Unsupported("audit_log"))
    }

    /// Creates a stack, audited, committed before returning. Returns its id.
    ///
    /// # Errors
    /// `Invalid` for a quantity <= 0; `NotFound` for an unknown character, item type,
    /// station, or a ship the character does not own.
    async fn grant_items(&self, grant: GrantItems) -> Result<ItemStackId, StoreError> {
        let _ = grant;
        Err(StoreError::Unsupported("grant_items"))
    }

    /// Every stack the character owns, ordered by id.
    ///
    /// # Errors
    /// As any store read.
    async fn inventory(&self, character_id: CharacterId) -> Result<Vec<ItemStack>, StoreError> {
        let _ = character_id;
        Err(StoreError::Unsupported("inventory"))
    }

    /// Moves items (see [`ItemTransfer`]), audited, committed before returning.
    /// Returns the id of the stack that now holds the moved items. Of two concurrent
    /// transfers that cannot both happen, exactly one succeeds.
    ///
    /// # Errors
    /// `Invalid` for a quantity <= 0 or `from == to`; `NotFound` if the stack is not the
    /// character's, or the destination does not exist or is not the character's ship;
    /// `Conflict` if the stack is no longer at `from` or holds fewer than `quantity`.
    async fn transfer_items(&self, transfer: ItemTransfer) -> Result<ItemStackId, StoreError> {
        let _ = transfer;
        Err(StoreError::Unsupported("transfer_items"))
    }

    /// Fits a module (see [`FitModule`]), audited, committed before returning. Of two
    /// concurrent fits into one slot, or of one last item, exactly one succeeds.
    ///
    /// # Errors
    /// `Invalid` for a slot index outside `0..SHIP_SLOTS_MAX`; `NotFound` if the ship or
    /// the stack is not the character's; `Conflict` if the slot is taken or the stack
    /// was emptied meanwhile.
    async fn fit_module(&self, fit: FitModule) -> Result<(), StoreError> {
        let _ = fit;
        Err(StoreError::Unsupported("fit_module"))
    }

    /// Unfits a module into a new stack of 1 in the ship's cargo, audited, committed
    /// before returning. Returns that stack's id.
    ///
    /// # Errors
    /// `Invalid` for a slot index out of range; `NotFound` if the ship is not the
    /// character's or the slot is empty (also for the loser of two concurrent unfits).
    async fn unfit_module(&self, unfit: UnfitModule) -> Result<ItemStackId, StoreError> {
        let _ = unfit;
        Err(StoreError::Unsupported("unfit_module"))
    }

    /// The modules fitted to a ship, in slot order.
    ///
    /// # Errors
    /// As any store read.
    async fn ship_fitting(&self, ship_id: ShipId) -> Result<Vec<FittedModule>, StoreError> {
        let _ = ship_id;
        Err(StoreError::Unsupported("ship_fitting"))
    }

    /// The account with this id, if any.
    ///
    /// # Errors
    /// As any store read.
    async fn account_by_id(&self, account_id: AccountId) -> Result<Option<Account>, StoreError> {
        let _ = account_id;
        Err(StoreError::Unsupported("account_by_id"))
    }

    /// Sets an account's role (`"player"` or `"admin"`), audited.
    ///
    /// # Errors
    /// `Invalid` for another role; `NotFound` for an unknown account.
    async fn set_account_role(
        &self,
        account_id: AccountId,
        role: &str,
        at_unix_ms: i64,
    ) -> Result<(), StoreError> {
        let _ = (account_id, role, at_unix_ms);
        Err(StoreError::Unsupported("set_account_role"))
    }

    /// Exchanges a refresh token for a new one of the same family, in one transaction
    /// (see [`RefreshOutcome`]). A token can be exchanged once: presenting it again
    /// revokes its whole family. Of two concurrent exchanges of one token, one rotates
    /// and the other detects reuse.
    ///
    /// # Errors
    /// As any store write; a logical "no" is [`RefreshOutcome::Rejected`], not an error.
    async fn rotate_refresh_token(
        &self,
        rotation: RefreshRotation,
    ) -> Result<RefreshOutcome, StoreError> {
        let _ = rotation;
        Err(StoreError::Unsupported("rotate_refresh_token"))
    }

    /// Revokes the family of the refresh token with this hash (logout). Returns the
    /// token's account, or `None` for an unknown token. Idempotent.
    ///
    /// # Errors
    /// As any store write.
    async fn revoke_refresh_family(
        &self,
        token_sha256: [u8; 32],
    ) -> Result<Option<AccountId>, StoreError> {
        let _ = token_sha256;
        Err(StoreError::Unsupported("revoke_refresh_family"))
    }

    /// One ship by id, with its hull, fitted modules (slot order) and last flushed state;
    /// `None` if there is no such ship in space (never was, or destroyed).
    ///
    /// # Errors
    /// As any store read.
    async fn ship(&self, ship_id: ShipId) -> Result<Option<ShipRecord>, StoreError> {
        let _ = ship_id;
        Err(StoreError::Unsupported("ship"))
    }

    /// The account's ships in space (every character), by id, at most
    /// [`SHIPS_READ_ROWS_MAX`]; destroyed ships are not listed.
    ///
    /// # Errors
    /// As any store read.
    async fn ships_of_account(&self, account_id: AccountId) -> Result<Vec<ShipRecord>, StoreError> {
        let _ = account_id;
        Err(StoreError::Unsupported("ships_of_account"))
    }

    /// The account that owns a character, or `None` for an unknown character.
    ///
    /// # Errors
    /// As any store read.
    async fn character_account(
        &self,
        character_id: CharacterId,
    ) -> Result<Option<AccountId>, StoreError> {
        let _ = character_id;
        Err(StoreError::Unsupported("character_account"))
    }

    /// The module catalogue, by id.
    ///
    /// # Errors
    /// As any store read.
    async fn module_types(&self) -> Result<Vec<ModuleType>, StoreError> {
        Err(StoreError::Unsupported("module_types"))
    }

    /// Stations with `id > after_id`, by id, at most `limit` (capped at
    /// [`STATIONS_PAGE_ROWS_MAX`]).
    ///
    /// # Errors
    /// As any store read.
    async fn stations_page(&self, after_id: i64, limit: usize) -> Result<Vec<Station>, StoreError> {
        let _ = (after_id, limit);
        Err(StoreError::Unsupported("stations_page"))
    }

    /// The recipe catalogue, by id.
    ///
    /// # Errors
    /// As any store read.
    async fn recipes(&self) -> Result<Vec<Recipe>, StoreError> {
        Err(StoreError::Unsupported("recipes"))
    }

    /// Starts a crafting job in one transaction: checks that the character is the
    /// account's, that its queue has room, and that it owns every input (summed over
    /// its stacks, wherever they are), takes them (oldest stacks first), inserts the
    /// job `Queued` and audits it. Of concurrent starts that cannot all be paid for,
    /// exactly the ones the materials cover succeed; nothing is taken twice.
    ///
    /// # Errors
    /// `Invalid` for a quantity outside `1..=CRAFTING_QUANTITY_MAX`; `NotFound` for an
    /// unknown recipe or a character that is not the account's; `Conflict` when the
    /// character already has [`CRAFTING_QUEUE_JOBS_MAX`] jobs queued;
    /// `InsufficientMaterials` naming the first input that is short.
    async fn start_crafting_job(
        &self,
        start: StartCrafting,
    ) -> Result<CraftingJobRecord, StoreError> {
        let _ = start;
        Err(StoreError::Unsupported("start_crafting_job"))
    }

    /// Cancels a queued job of the account and refunds its materials to the job's
    /// station, in one transaction, audited. Returns the job as cancelled. Of a cancel
    /// and a completion of one job, exactly one takes effect.
    ///
    /// # Errors
    /// `NotFound` if the job is not the account's; `Conflict` if it is already
    /// completed or cancelled.
    async fn cancel_crafting_job(
        &self,
        account_id: AccountId,
        job_id: CraftingJobId,
        at_unix_ms: i64,
    ) -> Result<CraftingJobRecord, StoreError> {
        let _ = (account_id, job_id, at_unix_ms);
        Err(StoreError::Unsupported("cancel_crafting_job"))
    }

    /// Completes a queued job: grants its product to the job's station and marks it
    /// completed, in one transaction, audited. Idempotent: completing a completed job
    /// grants nothing and answers [`CraftingCompletion::AlreadyCompleted`].
    ///
    /// # Errors
    /// `NotFound` for an unknown job; `Conflict` if it was cancelled.
    async fn complete_crafting_job(
        &self,
        job_id: CraftingJobId,
        at_unix_ms: i64,
    ) -> Result<CraftingCompletion, StoreError> {
        let _ = (job_id, at_unix_ms);
        Err(StoreError::Unsupported("complete_crafting_job"))
    }

    /// A character's jobs, by id: every queued one (queue order) and the
    /// [`CRAFTING_FINISHED_READ_ROWS_MAX`] most recent finished ones.
    ///
    /// # Errors
    /// As any store read.
    async fn crafting_jobs(
        &self,
        character_id: CharacterId,
    ) -> Result<Vec<CraftingJobRecord>, StoreError> {
        let _ = character_id;
        Err(StoreError::Unsupported("crafting_jobs"))
    }

    /// One job by id, if any.
    ///
    /// # Errors
    /// As any store read.
    async fn crafting_job(
        &self,
        job_id: CraftingJobId,
    ) -> Result<Option<CraftingJobRecord>, StoreError> {
        let _ = job_id;
        Err(StoreError::Unsupported("crafting_job"))
    }

    /// Queued jobs of every character with `id > after_id`, by id, at most `limit`
    /// (capped at [`CRAFTING_QUEUED_READ_ROWS_MAX`]): what the server hands the engine
    /// again after a restart.
    ///
    /// # Errors
    /// As any store read.
    async fn queued_crafting_jobs(
        &self,
        after_id: CraftingJobId,
        limit: usize,
    ) -> Result<Vec<CraftingJobRecord>, StoreError> {
        let _ = (after_id, limit);
        Err(StoreError::Unsupported("queued_crafting_jobs"))
    }
}
