//! `warpcore replay FILE`: re-runs an input recording made with `--record-inputs` and
//! prints `tick hash` every 100 ticks, the same lines the live server logged, so the
//! two can be compared line by line.

use std::fs::File;
use std::io::{BufReader, Write};
use std::path::Path;

use anyhow::Context;

/// Replays `file` with `worker_threads` engine workers, printing to stdout.
///
/// # Errors
/// The file cannot be read or is not a valid recording.
pub fn run(file: &Path, worker_threads: usize) -> anyhow::Result<()> {
    let input = BufReader::new(
        File::open(file).with_context(|| format!("opening recording {}", file.display()))?,
    );
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut write_error = None;
    let summary = warpcore_engine::replay(input, worker_threads, &mut |tick, hash| {
        if write_error.is_none() {
            if let Err(e) = writeln!(out, "{tick} {hash:016x}") {
                write_error = Some(e);
            }
        }
    })
    .with_context(|| format!("replaying {}", file.display()))?;
    if let Some(e) = write_error {
        return Err(e).context("writing replay output");
    }
    writeln!(
        out,
        "# {} inputs, last tick {}, final hash {:016x}",
        summary.inputs, summary.last_tick, summary.final_hash
    )?;
    Ok(())
}
