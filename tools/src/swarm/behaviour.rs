//! What the bots do: one behaviour for every bot, or a mix by percentage
//! (`--behaviour roam=50,battle=30,warp=20`), handed out over the bots in order.

use std::fmt;
use std::str::FromStr;

/// What a bot does once connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Behaviour {
    /// Fly random headings at honest speeds.
    #[default]
    Roam,
    /// Converge on the crowd each bot can see and fire at the nearest ship: a dense
    /// battle (the Galaxy RTS document's MassiveBattle).
    Battle,
    /// Roam a few seconds, then warp to a random star system (the engine spools,
    /// then jumps), and again; each arrival is timed from the order.
    Warp,
    /// Roam while working the economy over HTTP: start crafting jobs, read the
    /// queue, cancel the oldest (needs per-bot logins and `--server-secret` to grant
    /// the bots materials).
    Craft,
}

impl Behaviour {
    const ALL: [(&'static str, Behaviour); 4] = [
        ("roam", Behaviour::Roam),
        ("battle", Behaviour::Battle),
        ("warp", Behaviour::Warp),
        ("craft", Behaviour::Craft),
    ];

    fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, b)| *b == self)
            .map_or("?", |(n, _)| n)
    }
}

impl FromStr for Behaviour {
    type Err = String;

    fn from_str(s: &str) -> Result<Behaviour, String> {
        Self::ALL
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(s.trim()))
            .map(|(_, b)| *b)
            .ok_or_else(|| format!("unknown behaviour {s:?}; known: roam, battle, warp, craft"))
    }
}

/// Behaviours with their percentage of the bots (summing to 100).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BehaviourMix(Vec<(Behaviour, u32)>);

impl From<Behaviour> for BehaviourMix {
    fn from(behaviour: Behaviour) -> BehaviourMix {
        BehaviourMix(vec![(behaviour, 100)])
    }
}

impl Default for BehaviourMix {
    fn default() -> BehaviourMix {
        Behaviour::default().into()
    }
}

impl BehaviourMix {
    /// The behaviour of bot `index` of `bots`: the first share of the bots gets the
    /// first behaviour, and so on (the last behaviour takes any rounding remainder).
    pub fn for_bot(&self, index: usize, bots: usize) -> Behaviour {
        let mut upto = 0u64;
        for &(behaviour, percent) in &self.0 {
            upto += u64::from(percent);
            if (index as u64) * 100 < upto * bots as u64 {
                return behaviour;
            }
        }
        self.0.last().map_or(Behaviour::Roam, |(b, _)| *b)
    }

    /// Whether any bot gets `behaviour`.
    pub fn includes(&self, behaviour: Behaviour) -> bool {
        self.0.iter().any(|&(b, p)| b == behaviour && p > 0)
    }
}

impl FromStr for BehaviourMix {
    type Err = String;

    /// `roam`, or `roam=60,warp=40` (percentages of the bots, summing to 100).
    fn from_str(s: &str) -> Result<BehaviourMix, String> {
        if !s.contains('=') {
            return Ok(s.parse::<Behaviour>()?.into());
        }
        let mut parts = Vec::new();
        for part in s.split(',') {
            let (name, percent) = part
                .split_once('=')
                .ok_or_else(|| format!("a mix is name=percent,...; got {part:?}"))?;
            let behaviour: Behaviour = name.parse()?;
            let percent: u32 = percent
                .trim()
                .parse()
                .map_err(|_| format!("{name}: {percent:?} is not a whole percentage"))?;
            if parts.iter().any(|(b, _)| *b == behaviour) {
                return Err(format!("{name} appears twice in the mix"));
            }
            parts.push((behaviour, percent));
        }
        let total: u32 = parts.iter().map(|(_, p)| *p).sum();
        if total != 100 {
            return Err(format!("the mix's percentages add up to {total}, not 100"));
        }
        Ok(BehaviourMix(parts))
    }
}

impl fmt::Display for BehaviourMix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|(b, p)| format!("{}={p}", b.name()))
            .collect();
        f.write_str(&parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_single_name_is_every_bot() {
        let mix: BehaviourMix = "battle".parse().unwrap();
        assert!((0..10).all(|i| mix.for_bot(i, 10) == Behaviour::Battle));
        assert!(mix.includes(Behaviour::Battle) && !mix.includes(Behaviour::Roam));
    }

    #[test]
    fn a_mix_shares_the_bots_by_percentage() {
        let mix: BehaviourMix = "roam=50,battle=30,warp=20".parse().unwrap();
        let count = |b| (0..1000).filter(|&i| mix.for_bot(i, 1000) == b).count();
        assert_eq!(count(Behaviour::Roam), 500);
        assert_eq!(count(Behaviour::Battle), 300);
        assert_eq!(count(Behaviour::Warp), 200);
        assert_eq!(mix.to_string(), "roam=50,battle=30,warp=20");
        // Few bots: each gets one of the behaviours, in order.
        let few: Vec<Behaviour> = (0..3).map(|i| mix.for_bot(i, 3)).collect();
        assert_eq!(few, [Behaviour::Roam, Behaviour::Roam, Behaviour::Battle]);
    }

    #[test]
    fn bad_mixes_are_refused_with_a_reason() {
        for (text, says) in [
            ("fly", "unknown behaviour"),
            ("roam=50,battle=40", "add up to 90"),
            ("roam=50,roam=50", "twice"),
            ("roam=half,battle=50", "whole percentage"),
            ("roam=50,battle", "name=percent"),
        ] {
            let err = text.parse::<BehaviourMix>().unwrap_err();
            assert!(err.contains(says), "{text}: {err}");
        }
    }
}
