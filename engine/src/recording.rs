//! Input recording and replay (the Galaxy RTS replay system). Every input that reaches
//! the engine — spawns, attachments, client payloads, settings, ticks — can be written to
//! a byte stream as it happens; [`replay`] feeds a recording to a fresh engine and
//! reports the state hash every [`REPLAY_HASH_EVERY_TICKS`] ticks, the same hashes the
//! live server logs, so a replay can be compared with the live run line by line. Since
//! the engine is deterministic and thread-count independent, equal inputs give equal
//! hashes. Files are opened by the caller: this module sees only `Read` and `Write`.
//!
//! # Format (all little-endian)
//!
//! Header: the 8 magic bytes `WCREC\0\0\x01`, then the configuration that affects the
//! simulation: `tick_hz u32, sector_size_m f64, inbox_commands_max u64,
//! snapshot_bytes_max u64, deferrable_commands_per_sector_tick u64, warp_spool_s f64,
//! ai_defend_s f64, massive_battle_participants u64`. Then records, each a tag byte and
//! its fields: `1` spawn (entity u64, owner u64, mass, max speed, accel, hit points,
//! x, y, vx, vy: f64); `2` attach (client, account, entity: u64); `3` spectate (client
//! u64, x i64, y i64, scale u8); `4` detach (client u64); `5` message (client u64, len
//! u16, len bytes); `6` time dilation (f64); `7` star systems (n u32, n × (id u32, x f64,
//! y f64)); `8` weapons (entity u64, damage, range, cooldown, hit chance, critical
//! chance: f64); `9` refit (entity u64, mass, max speed, accel, hit points: f64); `10`
//! resume from tick (u64); `11` tick. The stream ends at a record boundary.

use std::io::{self, BufWriter, Read, Write};

use thiserror::Error;

use crate::config::{EngineConfig, EngineError};
use crate::crafting::CraftingJob;
use crate::engine::{Engine, STAR_SYSTEMS_MAX};
use crate::sector_id::{SectorId, SCALE_MAX};
use crate::ship::{ShipSpawn, ShipStats, StarSystem, WeaponStats};

/// The live server logs, and [`replay`] reports, the state hash every this many ticks.
pub const REPLAY_HASH_EVERY_TICKS: u64 = 100;
/// Magic bytes at the start of a recording (format version 1).
pub const RECORDING_MAGIC: [u8; 8] = *b"WCREC\0\0\x01";
/// Longest client payload a recording holds (its length field is a `u16`).
pub const RECORDED_PAYLOAD_BYTES_MAX: usize = u16::MAX as usize;

const TAG_SPAWN: u8 = 1;
const TAG_ATTACH: u8 = 2;
const TAG_SPECTATE: u8 = 3;
const TAG_DETACH: u8 = 4;
const TAG_MESSAGE: u8 = 5;
const TAG_TIME_DILATION: u8 = 6;
const TAG_STAR_SYSTEMS: u8 = 7;
const TAG_WEAPONS: u8 = 8;
const TAG_REFIT: u8 = 9;
const TAG_RESUME: u8 = 10;
const TAG_TICK: u8 = 11;
const TAG_CRAFT: u8 = 12;
const TAG_CANCEL_CRAFT: u8 = 13;
const TAG_HIT_POINTS: u8 = 14;
const TAG_ORDER_WARP: u8 = 15;
const TAG_DESTROY: u8 = 16;

/// One engine input, as recorded.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Input<'a> {
    /// [`Engine::spawn_ship`].
    Spawn(ShipSpawn),
    /// [`Engine::attach_client`].
    Attach {
        /// Client id.
        client: u64,
        /// Account id.
        account_id: u64,
        /// The ship.
        entity_id: u64,
    },
    /// [`Engine::attach_spectator`].
    Spectate {
        /// Client id.
        client: u64,
        /// Watched sector.
        sector: SectorId,
    },
    /// [`Engine::detach_client`].
    Detach {
        /// Client id.
        client: u64,
    },
    /// [`Engine::handle_client_message`].
    Message {
        /// Client id.
        client: u64,
        /// The payload, as received.
        payload: &'a [u8],
    },
    /// [`Engine::set_time_dilation`].
    TimeDilation(f64),
    /// [`Engine::start_crafting`].
    Craft(CraftingJob),
    /// [`Engine::set_hit_points`].
    HitPoints {
        /// The ship.
        entity_id: u64,
        /// Its hit points.
        hit_points: f64,
    },
    /// [`Engine::cancel_crafting`].
    CancelCraft {
        /// The player.
        account_id: u64,
        /// The job.
        job_id: u64,
    },
    /// [`Engine::set_star_systems`].
    StarSystems(&'a [StarSystem]),
    /// [`Engine::set_weapons`].
    Weapons {
        /// The ship.
        entity_id: u64,
        /// Its battery.
        weapons: WeaponStats,
    },
    /// [`Engine::refit_ship`].
    Refit {
        /// The ship.
        entity_id: u64,
        /// Its new stats.
        stats: ShipStats,
    },
    /// [`Engine::order_warp`].
    OrderWarp {
        /// The ship.
        entity_id: u64,
        /// The destination system.
        system_id: u32,
    },
    /// [`Engine::destroy_ship`].
    Destroy {
        /// The ship.
        entity_id: u64,
    },
    /// [`Engine::resume_from_tick`].
    ResumeFromTick(u64),
    /// [`Engine::tick`].
    Tick,
}

/// Why a recording cannot be read or replayed.
#[derive(Debug, Error)]
pub enum RecordingError {
    /// Reading failed.
    #[error("cannot read the recording: {0}")]
    Io(#[from] io::Error),
    /// The bytes are not a recording of this format.
    #[error("malformed recording: {0}")]
    Format(&'static str),
    /// The recorded configuration is not valid.
    #[error("recorded configuration: {0}")]
    Engine(#[from] EngineError),
}

/// Writes inputs to a byte sink (buffered).
pub(crate) struct Recorder {
    out: BufWriter<Box<dyn Write + Send>>,
}

impl Recorder {
    /// Writes the header for `config`.
    pub(crate) fn start(
        sink: Box<dyn Write + Send>,
        config: &EngineConfig,
    ) -> io::Result<Recorder> {
        let mut out = BufWriter::new(sink);
        out.write_all(&RECORDING_MAGIC)?;
        out.write_all(&config.tick_hz.to_le_bytes())?;
        out.write_all(&config.sector_size_m.to_le_bytes())?;
        out.write_all(&(config.inbox_commands_max as u64).to_le_bytes())?;
        out.write_all(&(config.snapshot_bytes_max as u64).to_le_bytes())?;
        out.write_all(&(config.deferrable_commands_per_sector_tick as u64).to_le_bytes())?;
        out.write_all(&config.warp_spool_s.to_le_bytes())?;
        out.write_all(&config.ai_defend_s.to_le_bytes())?;
        out.write_all(&config.massive_battle_participants.to_le_bytes())?;
        Ok(Recorder { out })
    }

    pub(crate) fn write(&mut self, input: &Input<'_>) -> io::Result<()> {
        write_input(&mut self.out, input)
    }

    pub(crate) fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

fn f64s(out: &mut impl Write, values: &[f64]) -> io::Result<()> {
    values
        .iter()
        .try_for_each(|v| out.write_all(&v.to_le_bytes()))
}

/// Writes one input record.
///
/// # Errors
/// The sink's I/O error; `InvalidInput` for a payload above
/// [`RECORDED_PAYLOAD_BYTES_MAX`] or more than `STAR_SYSTEMS_MAX` systems.
pub fn write_input(out: &mut impl Write, input: &Input<'_>) -> io::Result<()> {
    match *input {
        Input::Spawn(s) => {
            out.write_all(&[TAG_SPAWN])?;
            out.write_all(&s.entity_id.to_le_bytes())?;
            out.write_all(&s.owner_account.to_le_bytes())?;
            let st = s.stats;
            f64s(
                out,
                &[
                    st.mass_kg,
                    st.max_speed_mps,
                    st.accel_mps2,
                    st.hit_points,
                    s.x_m,
                    s.y_m,
                    s.vx_mps,
                    s.vy_mps,
                ],
            )
        }
        Input::Attach {
            client,
            account_id,
            entity_id,
        } => {
            out.write_all(&[TAG_ATTACH])?;
            out.write_all(&client.to_le_bytes())?;
            out.write_all(&account_id.to_le_bytes())?;
            out.write_all(&entity_id.to_le_bytes())
        }
        Input::Spectate { client, sector } => {
            out.write_all(&[TAG_SPECTATE])?;
            out.write_all(&client.to_le_bytes())?;
            out.write_all(&sector.x.to_le_bytes())?;
            out.write_all(&sector.y.to_le_bytes())?;
            out.write_all(&[sector.scale])
        }
        Input::Detach { client } => {
            out.write_all(&[TAG_DETACH])?;
            out.write_all(&client.to_le_bytes())
        }
        Input::Message { client, payload } => {
            let len = u16::try_from(payload.len())
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "payload too long"))?;
            out.write_all(&[TAG_MESSAGE])?;
            out.write_all(&client.to_le_bytes())?;
            out.write_all(&len.to_le_bytes())?;
            out.write_all(payload)
        }
        Input::TimeDilation(factor) => {
            out.write_all(&[TAG_TIME_DILATION])?;
            out.write_all(&factor.to_le_bytes())
        }
        Input::StarSystems(systems) => {
            if systems.len() > STAR_SYSTEMS_MAX {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "too many systems",
                ));
            }
            out.write_all(&[TAG_STAR_SYSTEMS])?;
            out.write_all(&(systems.len() as u32).to_le_bytes())?;
            for system in systems {
                out.write_all(&system.system_id.to_le_bytes())?;
                f64s(out, &[system.x_m, system.y_m])?;
            }
            Ok(())
        }
        Input::Weapons { entity_id, weapons } => {
            out.write_all(&[TAG_WEAPONS])?;
            out.write_all(&entity_id.to_le_bytes())?;
            f64s(
                out,
                &[
                    weapons.damage,
                    weapons.range_m,
                    weapons.cooldown_s,
                    weapons.hit_chance,
                    weapons.critical_chance,
                ],
            )
        }
        Input::Refit { entity_id, stats } => {
            out.write_all(&[TAG_REFIT])?;
            out.write_all(&entity_id.to_le_bytes())?;
            f64s(
                out,
                &[
                    stats.mass_kg,
                    stats.max_speed_mps,
                    stats.accel_mps2,
                    stats.hit_points,
                ],
            )
        }
        Input::Destroy { entity_id } => {
            out.write_all(&[TAG_DESTROY])?;
            out.write_all(&entity_id.to_le_bytes())
        }
        Input::ResumeFromTick(tick) => {
            out.write_all(&[TAG_RESUME])?;
            out.write_all(&tick.to_le_bytes())
        }
        Input::Tick => out.write_all(&[TAG_TICK]),
        Input::Craft(job) => {
            out.write_all(&[TAG_CRAFT])?;
            out.write_all(&job.job_id.to_le_bytes())?;
            out.write_all(&job.account_id.to_le_bytes())?;
            out.write_all(&job.recipe_id.to_le_bytes())?;
            out.write_all(&job.quantity.to_le_bytes())?;
            f64s(out, &[job.duration_s])
        }
        Input::HitPoints {
            entity_id,
            hit_points,
        } => {
            out.write_all(&[TAG_HIT_POINTS])?;
            out.write_all(&entity_id.to_le_bytes())?;
            f64s(out, &[hit_points])
        }
        Input::CancelCraft { account_id, job_id } => {
            out.write_all(&[TAG_CANCEL_CRAFT])?;
            out.write_all(&account_id.to_le_bytes())?;
            out.write_all(&job_id.to_le_bytes())
        }
        Input::OrderWarp {
            entity_id,
            system_id,
        } => {
            out.write_all(&[TAG_ORDER_WARP])?;
            out.write_all(&entity_id.to_le_bytes())?;
            out.write_all(&system_id.to_le_bytes())
        }
    }
}

/// Reads a recording record by record, reusing its buffers.
pub struct InputReader<R> {
    input: R,
    config: EngineConfig,
    payload: Vec<u8>,
    systems: Vec<StarSystem>,
}

impl<R: Read> InputReader<R> {
    /// Reads and checks the header.
    ///
    /// # Errors
    /// [`RecordingError::Format`] for a wrong magic or invalid configuration values,
    /// [`RecordingError::Io`] for a read error or a truncated header.
    pub fn new(mut input: R) -> Result<InputReader<R>, RecordingError> {
        let mut magic = [0u8; 8];
        input.read_exact(&mut magic)?;
        if magic != RECORDING_MAGIC {
            return Err(RecordingError::Format("not a warpcore input recording"));
        }
        let mut config = EngineConfig {
            tick_hz: u32::from_le_bytes(read_array(&mut input)?),
            sector_size_m: read_f64(&mut input)?,
            inbox_commands_max: read_usize(&mut input)?,
            snapshot_bytes_max: read_usize(&mut input)?,
            deferrable_commands_per_sector_tick: read_usize(&mut input)?,
            warp_spool_s: read_f64(&mut input)?,
            ai_defend_s: read_f64(&mut input)?,
            massive_battle_participants: read_u64(&mut input)?,
            ..EngineConfig::default()
        };
        config.worker_threads = 0;
        config.validate()?;
        Ok(InputReader {
            input,
            config,
            payload: Vec::new(),
            systems: Vec::new(),
        })
    }

    /// The configuration the recording was made with (`worker_threads` 0).
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// The next input, or `None` at the end of the stream.
    ///
    /// # Errors
    /// [`RecordingError::Format`] for an unknown tag or a bad count,
    /// [`RecordingError::Io`] for a read error or a record cut short.
    pub fn next_input(&mut self) -> Result<Option<Input<'_>>, RecordingError> {
        let mut tag = [0u8; 1];
        match self.input.read(&mut tag) {
            Ok(0) => return Ok(None),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return self.next_input(),
            Err(e) => return Err(e.into()),
        }
        let r = &mut self.input;
        let input = match tag[0] {
            TAG_SPAWN => {
                let entity_id = read_u64(r)?;
                let owner_account = read_u64(r)?;
                let v = read_f64s::<8>(r)?;
                Input::Spawn(ShipSpawn {
                    entity_id,
                    owner_account,
                    stats: ShipStats {
                        mass_kg: v[0],
                        max_speed_mps: v[1],
                        accel_mps2: v[2],
                        hit_points: v[3],
                    },
                    x_m: v[4],
                    y_m: v[5],
                    vx_mps: v[6],
                    vy_mps: v[7],
                })
            }
            TAG_ATTACH => Input::Attach {
                client: read_u64(r)?,
                account_id: read_u64(r)?,
                entity_id: read_u64(r)?,
            },
            TAG_SPECTATE => {
                let client = read_u64(r)?;
                let x = read_u64(r)? as i64;
                let y = read_u64(r)? as i64;
                let [scale] = read_array::<1>(r)?;
                if scale > SCALE_MAX {
                    return Err(RecordingError::Format("sector scale out of range"));
                }
                Input::Spectate {
                    client,
                    sector: SectorId::new(x, y, scale),
                }
            }
            TAG_DETACH => Input::Detach {
                client: read_u64(r)?,
            },
            TAG_MESSAGE => {
                let client = read_u64(r)?;
                let len = usize::from(u16::from_le_bytes(read_array(r)?));
                self.payload.resize(len, 0);
                r.read_exact(&mut self.payload)?;
                Input::Message {
                    client,
                    payload: &self.payload,
                }
            }
            TAG_TIME_DILATION => Input::TimeDilation(read_f64(r)?),
            TAG_STAR_SYSTEMS => {
                let n = u32::from_le_bytes(read_array(r)?) as usize;
                if n > STAR_SYSTEMS_MAX {
                    return Err(RecordingError::Format("too many star systems"));
                }
                self.systems.clear();
                for _ in 0..n {
                    let system_id = u32::from_le_bytes(read_array(r)?);
                    let [x_m, y_m] = read_f64s::<2>(r)?;
                    self.systems.push(StarSystem {
                        system_id,
                        x_m,
                        y_m,
                    });
                }
                Input::StarSystems(&self.systems)
            }
            TAG_WEAPONS => {
                let entity_id = read_u64(r)?;
                let v = read_f64s::<5>(r)?;
                Input::Weapons {
                    entity_id,
                    weapons: WeaponStats {
                        damage: v[0],
                        range_m: v[1],
                        cooldown_s: v[2],
                        hit_chance: v[3],
                        critical_chance: v[4],
                    },
                }
            }
            TAG_REFIT => {
                let entity_id = read_u64(r)?;
                let v = read_f64s::<4>(r)?;
                Input::Refit {
                    entity_id,
                    stats: ShipStats {
                        mass_kg: v[0],
                        max_speed_mps: v[1],
                        accel_mps2: v[2],
                        hit_points: v[3],
                    },
                }
            }
            TAG_DESTROY => Input::Destroy {
                entity_id: read_u64(r)?,
            },
            TAG_RESUME => Input::ResumeFromTick(read_u64(r)?),
            TAG_TICK => Input::Tick,
            TAG_CRAFT => {
                let job_id = read_u64(r)?;
                let account_id = read_u64(r)?;
                let ids = read_u64(r)?;
                Input::Craft(CraftingJob {
                    job_id,
                    account_id,
                    // Two little-endian u32s, as written.
                    recipe_id: ids as u32,
                    quantity: (ids >> 32) as u32,
                    duration_s: read_f64(r)?,
                })
            }
            TAG_HIT_POINTS => Input::HitPoints {
                entity_id: read_u64(r)?,
                hit_points: read_f64(r)?,
            },
            TAG_CANCEL_CRAFT => Input::CancelCraft {
                account_id: read_u64(r)?,
                job_id: read_u64(r)?,
            },
            TAG_ORDER_WARP => Input::OrderWarp {
                entity_id: read_u64(r)?,
                system_id: read_u32(r)?,
            },
            _ => return Err(RecordingError::Format("unknown record tag")),
        };
        Ok(Some(input))
    }
}

fn read_array<const N: usize>(r: &mut impl Read) -> io::Result<[u8; N]> {
    let mut bytes = [0u8; N];
    r.read_exact(&mut bytes)?;
    Ok(bytes)
}

fn read_u32(r: &mut impl Read) -> io::Result<u32> {
    read_array(r).map(u32::from_le_bytes)
}

fn read_u64(r: &mut impl Read) -> io::Result<u64> {
    read_array(r).map(u64::from_le_bytes)
}

fn read_usize(r: &mut impl Read) -> Result<usize, RecordingError> {
    usize::try_from(read_u64(r)?).map_err(|_| RecordingError::Format("count out of range"))
}

fn read_f64(r: &mut impl Read) -> io::Result<f64> {
    read_array(r).map(f64::from_le_bytes)
}

fn read_f64s<const N: usize>(r: &mut impl Read) -> io::Result<[f64; N]> {
    let mut values = [0.0; N];
    for value in &mut values {
        *value = read_f64(r)?;
    }
    Ok(values)
}

/// What a replay did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplaySummary {
    /// Inputs applied.
    pub inputs: u64,
    /// The engine's tick counter at the end.
    pub last_tick: u64,
    /// The state hash at the end.
    pub final_hash: u64,
}

/// Re-runs a recording on a fresh engine with `worker_threads` workers (0 = one per
/// core) and calls `on_hash(tick, state_hash)` after every tick that is a multiple of
/// [`REPLAY_HASH_EVERY_TICKS`]. Inputs the live engine refused are refused again the
/// same way, so they change nothing.
///
/// # Errors
/// [`RecordingError`] for an unreadable or malformed recording, or a recorded
/// configuration the engine refuses.
pub fn replay(
    input: impl Read,
    worker_threads: usize,
    on_hash: &mut dyn FnMut(u64, u64),
) -> Result<ReplaySummary, RecordingError> {
    let mut reader = InputReader::new(input)?;
    let mut engine = Engine::new(EngineConfig {
        worker_threads,
        ..reader.config().clone()
    })?;
    let mut inputs = 0;
    while let Some(input) = reader.next_input()? {
        inputs += 1;
        apply(&mut engine, input, on_hash);
    }
    Ok(ReplaySummary {
        inputs,
        last_tick: engine.current_tick(),
        final_hash: engine.state_hash(),
    })
}

/// Applies one recorded input; refusals are part of the recorded history.
fn apply(engine: &mut Engine, input: Input<'_>, on_hash: &mut dyn FnMut(u64, u64)) {
    match input {
        Input::Spawn(ship) => {
            let _refused_live_too = engine.spawn_ship(ship);
        }
        Input::Attach {
            client,
            account_id,
            entity_id,
        } => {
            let _refused_live_too = engine.attach_client(client, account_id, entity_id);
        }
        Input::Spectate { client, sector } => engine.attach_spectator(client, sector),
        Input::Detach { client } => engine.detach_client(client),
        Input::Message { client, payload } => {
            let _refused_live_too = engine.handle_client_message(client, payload);
        }
        Input::TimeDilation(factor) => engine.set_time_dilation(factor),
        Input::StarSystems(systems) => {
            let _refused_live_too = engine.set_star_systems(systems);
        }
        Input::Weapons { entity_id, weapons } => {
            let _refused_live_too = engine.set_weapons(entity_id, weapons);
        }
        Input::Refit { entity_id, stats } => {
            let _refused_live_too = engine.refit_ship(entity_id, stats);
        }
        Input::Destroy { entity_id } => {
            let _refused_live_too = engine.destroy_ship(entity_id);
        }
        Input::ResumeFromTick(tick) => engine.resume_from_tick(tick),
        Input::Craft(job) => {
            let _refused_live_too = engine.start_crafting(job);
        }
        Input::HitPoints {
            entity_id,
            hit_points,
        } => {
            let _refused_live_too = engine.set_hit_points(entity_id, hit_points);
        }
        Input::CancelCraft { account_id, job_id } => {
            let _refused_live_too = engine.cancel_crafting(account_id, job_id);
        }
        Input::OrderWarp {
            entity_id,
            system_id,
        } => {
            let _refused_live_too = engine.order_warp(entity_id, system_id);
        }
        Input::Tick => {
            engine.tick();
            let tick = engine.current_tick();
            if tick.is_multiple_of(REPLAY_HASH_EVERY_TICKS) {
                on_hash(tick, engine.state_hash());
            }
        }
    }
}
