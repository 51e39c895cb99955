//! Service-level objectives the load tool checks at the end of a run
//! (`--slo rtt-p99-ms=5 --slo disconnects=0`): each names a figure of the report and a
//! limit; a breach makes `warpcore-swarm` exit non-zero.

use std::fmt;
use std::str::FromStr;

/// The figures an SLO can bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SloKind {
    /// Client-side round-trip time p99, milliseconds (at most).
    RttP99Ms,
    /// Client-side round-trip time maximum, milliseconds (at most).
    RttMaxMs,
    /// Received bytes per second per client, p99 over clients (at most).
    RxBytesPerSP99,
    /// Snapshots per second per client, the lowest client (at least).
    SnapshotsPerSMin,
    /// Bots that failed to connect (at most).
    ConnectFailures,
    /// Connections lost during flight (at most).
    Disconnects,
    /// Server tick time p99 from `/metrics`, milliseconds (at most).
    ServerTickP99Ms,
    /// Server command latency p99 (datagram to the tick that applies it) from
    /// `/metrics`, milliseconds (at most).
    ServerCommandLatencyP99Ms,
}

impl SloKind {
    const ALL: [(&'static str, SloKind); 8] = [
        ("rtt-p99-ms", SloKind::RttP99Ms),
        ("rtt-max-ms", SloKind::RttMaxMs),
        ("rx-bytes-per-s-p99", SloKind::RxBytesPerSP99),
        ("snapshots-per-s-min", SloKind::SnapshotsPerSMin),
        ("connect-failures", SloKind::ConnectFailures),
        ("disconnects", SloKind::Disconnects),
        ("server-tick-p99-ms", SloKind::ServerTickP99Ms),
        (
            "server-command-latency-p99-ms",
            SloKind::ServerCommandLatencyP99Ms,
        ),
    ];

    fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, k)| *k == self)
            .map(|(n, _)| *n)
            .unwrap_or("?")
    }

    /// Whether the limit is a floor (the figure must be at least the limit).
    fn is_floor(self) -> bool {
        matches!(self, SloKind::SnapshotsPerSMin)
    }
}

/// One objective: a figure and its limit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Slo {
    pub kind: SloKind,
    pub limit: f64,
}

impl FromStr for Slo {
    type Err = String;

    fn from_str(s: &str) -> Result<Slo, String> {
        let (name, value) = s
            .split_once('=')
            .ok_or_else(|| format!("an SLO is name=value, got {s:?}"))?;
        let kind = SloKind::ALL
            .iter()
            .find(|(n, _)| *n == name.trim())
            .map(|(_, k)| *k)
            .ok_or_else(|| {
                let names: Vec<&str> = SloKind::ALL.iter().map(|(n, _)| *n).collect();
                format!("unknown SLO {name:?}; known: {}", names.join(", "))
            })?;
        let limit: f64 = value
            .trim()
            .parse()
            .map_err(|_| format!("SLO {name}: {value:?} is not a number"))?;
        if !limit.is_finite() || limit < 0.0 {
            return Err(format!(
                "SLO {name}: the limit must be a finite number >= 0"
            ));
        }
        Ok(Slo { kind, limit })
    }
}

/// The outcome of one objective.
#[derive(Debug, Clone, PartialEq)]
pub struct SloResult {
    pub slo: Slo,
    /// The measured figure; `None` when the run could not measure it (a breach).
    pub measured: Option<f64>,
}

impl SloResult {
    pub fn passed(&self) -> bool {
        match self.measured {
            Some(v) if self.slo.kind.is_floor() => v >= self.slo.limit,
            Some(v) => v <= self.slo.limit,
            None => false,
        }
    }
}

impl fmt::Display for SloResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = if self.slo.kind.is_floor() { ">=" } else { "<=" };
        let measured = match self.measured {
            Some(v) => format!("{v:.3}"),
            None => "not measured".to_owned(),
        };
        write!(
            f,
            "slo {} {op} {}: {measured} {}",
            self.slo.kind.name(),
            self.slo.limit,
            if self.passed() { "PASS" } else { "BREACH" }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_known_objectives_and_refuses_the_rest() {
        let slo: Slo = "rtt-p99-ms=5".parse().unwrap();
        assert_eq!(
            slo,
            Slo {
                kind: SloKind::RttP99Ms,
                limit: 5.0
            }
        );
        assert!("rtt-p99-ms".parse::<Slo>().is_err());
        assert!("nonsense=1"
            .parse::<Slo>()
            .unwrap_err()
            .contains("known: rtt-p99-ms"));
        assert!("disconnects=-1".parse::<Slo>().is_err());
        assert!("disconnects=abc".parse::<Slo>().is_err());
    }

    #[test]
    fn ceilings_and_floors_judge_the_right_way() {
        let ceiling = Slo {
            kind: SloKind::RttP99Ms,
            limit: 5.0,
        };
        assert!(SloResult {
            slo: ceiling,
            measured: Some(4.9)
        }
        .passed());
        assert!(!SloResult {
            slo: ceiling,
            measured: Some(5.1)
        }
        .passed());
        let floor = Slo {
            kind: SloKind::SnapshotsPerSMin,
            limit: 10.0,
        };
        assert!(SloResult {
            slo: floor,
            measured: Some(10.0)
        }
        .passed());
        assert!(!SloResult {
            slo: floor,
            measured: Some(9.0)
        }
        .passed());
        assert!(!SloResult {
            slo: floor,
            measured: None
        }
        .passed());
        assert!(SloResult {
            slo: ceiling,
            measured: Some(6.0)
        }
        .to_string()
        .ends_with("BREACH"));
    }
}
