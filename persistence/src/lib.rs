//! warpcore persistence: the async [`Store`] trait every durable read and write goes
//! through, its SQLite backend, the versioned migrations both backends share, the demo
//! universe, and the write-behind queue that carries world state out of the tick.
//! The only crate that knows SQL. The durability contract is in `README.md`.

pub mod crafting;
pub mod demo;
pub mod economy;
pub mod migrations;
pub mod open;
pub mod postgres;
pub mod sqlite;
pub mod store;
#[cfg(any(test, feature = "test-util"))]
pub mod test_util;
pub mod world_log;
pub mod write_behind;

pub use open::open;
pub use postgres::{PgFlushMethod, PgStore};
pub use sqlite::{SqliteFlushMethod, SqliteStore};
pub use store::{
    Account, AccountId, CharacterId, EntityState, HullStats, ModuleType, NewAccount, Registered,
    ShipId, ShipRecord, StarSystem, Station, Store, StoreError,
};
pub use write_behind::{
    spawn_write_behind, SubmitError, WriteBehind, WriteBehindConfig, WriteBehindSender,
    WriteBehindStats,
};
