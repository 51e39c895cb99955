//! The craft behaviour's gateway side: while a craft bot flies (roaming over UDP), it
//! also works the economy over HTTP as a player would: start a crafting job (the
//! materials are consumed in one transaction), read its queue, and cancel the oldest
//! queued job once a few wait (the refund is another transaction), every 1.5–3 s.
//! Each call's latency goes into a histogram per operation.
//!
//! Materials come from the internal grant route (`X-Server-Secret`), once per bot
//! before the loop: enough for every job the run can start.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use warpcore_metrics as histogram;

use super::setup::{get, Session};

/// Runs of the recipe each bot is granted materials for (more than a run can start).
const RUNS_GRANTED: i64 = 1000;
/// Queued jobs a bot lets wait before it cancels the oldest.
const QUEUED_JOBS_KEPT: usize = 2;

/// What the craft bots did.
pub struct CraftReport {
    pub jobs_started: u64,
    pub jobs_cancelled: u64,
    /// Answers other than success (409 insufficient materials, 429, 5xx...), by call.
    pub refused: u64,
    /// Calls that failed at the transport (no answer).
    pub errors: u64,
    /// Per operation, microseconds: start a job, list the queue, cancel a job.
    pub start_us: Histogram<u64>,
    pub list_us: Histogram<u64>,
    pub cancel_us: Histogram<u64>,
}

impl CraftReport {
    fn new() -> CraftReport {
        CraftReport {
            jobs_started: 0,
            jobs_cancelled: 0,
            refused: 0,
            errors: 0,
            start_us: histogram::micros(),
            list_us: histogram::micros(),
            cancel_us: histogram::micros(),
        }
    }

    fn merge(&mut self, other: &CraftReport) {
        self.jobs_started += other.jobs_started;
        self.jobs_cancelled += other.jobs_cancelled;
        self.refused += other.refused;
        self.errors += other.errors;
        // Same bounds on both sides: adding cannot fail.
        let _ = self.start_us.add(&other.start_us);
        let _ = self.list_us.add(&other.list_us);
        let _ = self.cancel_us.add(&other.cancel_us);
    }

    /// The lines `warpcore-swarm` prints.
    pub fn summary(&self) -> String {
        [
            format!(
                "craft jobs started {} | cancelled {} | refused answers {} | failed calls {}",
                self.jobs_started, self.jobs_cancelled, self.refused, self.errors
            ),
            super::quantile_line("craft start job", &self.start_us, 1000.0, "ms"),
            super::quantile_line("craft list queue", &self.list_us, 1000.0, "ms"),
            super::quantile_line("craft cancel job", &self.cancel_us, 1000.0, "ms"),
        ]
        .join("\n")
    }
}

/// The recipe craft bots run and what one run consumes.
#[derive(Debug, Clone)]
pub(super) struct Recipe {
    recipe_id: i64,
    inputs: Vec<(i64, i64)>,
}

/// The recipe with the fewest inputs (cheapest to grant), read with `session`.
///
/// # Errors
/// The gateway did not list a recipe.
pub(super) async fn pick_recipe(
    http: &reqwest::Client,
    base: &str,
    session: &Session,
) -> anyhow::Result<Recipe> {
    let body = get(
        http,
        &format!("{base}/api/crafting/recipes"),
        &session.access_token,
    )
    .await?;
    let recipes = body["data"]["recipes"]
        .as_array()
        .ok_or_else(|| anyhow!("recipes reply has no list: {body}"))?;
    recipes
        .iter()
        .filter_map(|r| {
            let inputs = r["inputs"]
                .as_array()?
                .iter()
                .map(|i| Some((i["item_type_id"].as_i64()?, i["quantity"].as_i64()?)))
                .collect::<Option<Vec<_>>>()?;
            Some(Recipe {
                recipe_id: r["recipe_id"].as_i64()?,
                inputs,
            })
        })
        .min_by_key(|r| r.inputs.len())
        .ok_or_else(|| anyhow!("the gateway lists no recipe"))
}

/// Grants `session`'s ship the materials for [`RUNS_GRANTED`] runs of `recipe`.
///
/// # Errors
/// The internal route refused (wrong or missing server secret, unknown character).
pub(super) async fn grant_materials(
    http: &reqwest::Client,
    base: &str,
    server_secret: &str,
    session: &Session,
    recipe: &Recipe,
) -> anyhow::Result<()> {
    let url = format!("{base}/internal/items/grant");
    for &(item_type_id, per_run) in &recipe.inputs {
        let body = json!({
            "character_id": session.character_id,
            "item_type_id": item_type_id,
            "quantity": per_run * RUNS_GRANTED,
            "location": { "kind": "ship", "id": session.ship_id },
            "reason": "warpcore-swarm craft bot materials",
        });
        let response = http
            .post(&url)
            .header("X-Server-Secret", server_secret)
            .json(&body)
            .send()
            .await
            .with_context(|| format!("POST {url}"))?;
        let status = response.status().as_u16();
        if status != 201 {
            let text = response.text().await.unwrap_or_default();
            bail!("granting materials answered {status}: {text}");
        }
    }
    Ok(())
}

/// One craft bot's loop until `until`.
pub(super) async fn work(
    http: reqwest::Client,
    base: String,
    session: Session,
    recipe: Recipe,
    until: Instant,
    seed: u64,
) -> CraftReport {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut report = CraftReport::new();
    let character = session.character_id;
    let bearer = session.access_token.as_str();
    // Spread the bots' first calls over the first period.
    tokio::time::sleep(Duration::from_millis(rng.gen_range(0..1500))).await;
    while Instant::now() < until {
        let start =
            json!({ "character_id": character, "recipe_id": recipe.recipe_id, "quantity": 1 });
        let request = http
            .post(format!("{base}/api/crafting/jobs"))
            .bearer_auth(bearer)
            .json(&start);
        if call(request, &mut report, |r| &mut r.start_us, 201)
            .await
            .is_some()
        {
            report.jobs_started += 1;
        }
        let request = http
            .get(format!("{base}/api/crafting/jobs/{character}"))
            .bearer_auth(bearer);
        if let Some(jobs) = call(request, &mut report, |r| &mut r.list_us, 200).await {
            let queued: Vec<i64> = jobs["data"]["jobs"]
                .as_array()
                .map(|jobs| {
                    jobs.iter()
                        .filter(|j| j["status"] == "queued")
                        .filter_map(|j| j["job_id"].as_i64())
                        .collect()
                })
                .unwrap_or_default();
            if queued.len() > QUEUED_JOBS_KEPT {
                if let Some(oldest) = queued.iter().min() {
                    let request = http
                        .delete(format!("{base}/api/crafting/jobs/{oldest}"))
                        .bearer_auth(bearer);
                    if call(request, &mut report, |r| &mut r.cancel_us, 200)
                        .await
                        .is_some()
                    {
                        report.jobs_cancelled += 1;
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(1500..3000))).await;
    }
    report
}

/// Sends `request`, times it into the histogram `which` picks, and returns the body
/// of an answer with status `expected` (others are counted as refused).
async fn call(
    request: reqwest::RequestBuilder,
    report: &mut CraftReport,
    which: fn(&mut CraftReport) -> &mut Histogram<u64>,
    expected: u16,
) -> Option<Value> {
    let sent = Instant::now();
    let response = match request.send().await {
        Ok(response) => response,
        Err(_) => {
            report.errors += 1;
            return None;
        }
    };
    let status = response.status().as_u16();
    let body = response.json::<Value>().await.ok();
    histogram::record(which(report), sent.elapsed().as_micros() as u64);
    if status != expected {
        report.refused += 1;
        return None;
    }
    body
}

/// Runs every craft bot until `until` and merges their reports.
pub(super) async fn run_all(
    http: reqwest::Client,
    base: String,
    bots: Vec<(Session, Recipe)>,
    until: Instant,
    seed: u64,
) -> CraftReport {
    let mut tasks = tokio::task::JoinSet::new();
    for (i, (session, recipe)) in bots.into_iter().enumerate() {
        let seed = seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        tasks.spawn(work(
            http.clone(),
            base.clone(),
            session,
            recipe,
            until,
            seed,
        ));
    }
    let mut total = CraftReport::new();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(report) => total.merge(&report),
            Err(_) => total.errors += 1,
        }
    }
    total
}
