//! The standard HdrHistogram percentile-distribution text (`.hgrm`), as Java's
//! `outputPercentileDistribution` writes it, so the usual plotters read our files.
//! Written by hand because the `hdrhistogram` crate serialises only its binary formats.

use std::io::{self, Write};

use hdrhistogram::Histogram;

/// Writes the histogram called `name` as a percentile distribution, 5 percentile ticks
/// per half distance: a latency (microseconds) in milliseconds
/// (`outputValueUnitScalingRatio` 1000), any other quantity as recorded
/// ([`crate::display_unit`]).
///
/// # Errors
/// Whatever `out` returns.
pub fn write_hgrm(name: &str, h: &Histogram<u64>, out: &mut impl Write) -> io::Result<()> {
    let (scale, _) = crate::display_unit(name);
    writeln!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    )?;
    if !h.is_empty() {
        let mut total_count = 0u64;
        for v in h.iter_quantiles(5) {
            total_count += v.count_since_last_iteration();
            let q = v.quantile_iterated_to();
            let value = v.value_iterated_to() as f64 / scale;
            if q < 1.0 {
                writeln!(
                    out,
                    "{value:>12.3} {q:>2.12} {total_count:>10} {:>14.2}",
                    1.0 / (1.0 - q)
                )?;
            } else {
                writeln!(out, "{value:>12.3} {q:>2.12} {total_count:>10}")?;
            }
        }
    }
    let mean = h.mean() / scale;
    let stdev = h.stdev() / scale;
    writeln!(
        out,
        "#[Mean    = {mean:>12.3}, StdDeviation   = {stdev:>12.3}]"
    )?;
    writeln!(
        out,
        "#[Max     = {:>12.3}, Total count    = {:>12}]",
        h.max() as f64 / scale,
        h.len()
    )?;
    writeln!(
        out,
        "#[Buckets = {:>12}, SubBuckets     = {:>12}]",
        h.buckets(),
        h.distinct_values()
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::histogram::{micros, record};

    #[test]
    fn writes_a_distribution_that_ends_at_the_max() {
        let mut h = micros();
        for v in 1..=10_000u64 {
            record(&mut h, v);
        }
        let mut out = Vec::new();
        write_hgrm("t_seconds", &h, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("       Value     Percentile TotalCount 1/(1-Percentile)"));
        let rows: Vec<&str> = text
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.contains("Value"))
            .collect();
        assert!(rows.len() > 20, "{text}");
        let last: Vec<&str> = rows.last().unwrap().split_whitespace().collect();
        assert_eq!(last[1], "1.000000000000");
        assert_eq!(
            last[2], "10000",
            "the last row's cumulative count is the total"
        );
        assert!(text.contains("Total count    =        10000"));
        // TotalCount is cumulative: it never decreases.
        let counts: Vec<u64> = rows
            .iter()
            .map(|r| r.split_whitespace().nth(2).unwrap().parse().unwrap())
            .collect();
        assert!(counts.windows(2).all(|w| w[0] <= w[1]));
    }
}
