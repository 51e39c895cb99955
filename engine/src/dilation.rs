//! The time-dilation controller (EVE Online's answer to huge battles): fed the measured
//! duration of each tick, it returns the game-time factor for the next one. When ticks
//! overrun their budget, game time slows smoothly, down to a floor; when load drops it
//! recovers toward real time. Pure arithmetic on the durations it is given: the caller
//! (the server's tick loop) owns the clock and passes the factor to
//! [`crate::Engine::set_time_dilation`], so input is never dropped, only spread over more
//! real time.
//!
//! The rule: keep an exponentially smoothed tick duration; the target factor is
//! `budget / smoothed` (the share of real time the engine can keep up with), clamped to
//! `floor..=1`; the factor moves toward the target by at most `step_max` per tick, so
//! clients see a smooth ramp rather than jumps.

/// Default lowest factor: game time never runs slower than 10 % of real time.
pub const TIME_DILATION_FLOOR_DEFAULT: f64 = 0.1;
/// Default largest change of the factor per tick.
pub const TIME_DILATION_STEP_MAX_DEFAULT: f64 = 0.02;
/// Weight of the newest sample in the smoothed tick duration.
pub const TICK_DURATION_SMOOTHING: f64 = 0.1;

/// See the module docs.
#[derive(Debug, Clone, PartialEq)]
pub struct TimeDilationController {
    budget_us: f64,
    floor: f64,
    step_max: f64,
    smoothed_us: f64,
    factor: f64,
}

impl TimeDilationController {
    /// A controller for ticks of `budget_us` microseconds of real time (1e6 / tick_hz)
    /// with the default floor and step. Non-finite or non-positive budgets are treated
    /// as 1 µs; `floor` is clamped to `0.01..=1`.
    pub fn new(budget_us: f64, floor: f64) -> TimeDilationController {
        let budget_us = if budget_us.is_finite() && budget_us > 0.0 {
            budget_us
        } else {
            1.0
        };
        let floor = if floor.is_finite() {
            floor.clamp(0.01, 1.0)
        } else {
            TIME_DILATION_FLOOR_DEFAULT
        };
        TimeDilationController {
            budget_us,
            floor,
            step_max: TIME_DILATION_STEP_MAX_DEFAULT,
            smoothed_us: 0.0,
            factor: 1.0,
        }
    }

    /// A controller for `tick_hz` with the default floor (10 %).
    pub fn for_tick_hz(tick_hz: u32) -> TimeDilationController {
        TimeDilationController::new(
            1.0e6 / f64::from(tick_hz.max(1)),
            TIME_DILATION_FLOOR_DEFAULT,
        )
    }

    /// Takes the measured duration of the tick just run (simulation plus everything the
    /// loop does per tick, microseconds) and returns the factor for the next tick.
    /// A non-finite or negative sample is ignored.
    pub fn observe(&mut self, tick_duration_us: f64) -> f64 {
        if tick_duration_us.is_finite() && tick_duration_us >= 0.0 {
            self.smoothed_us += TICK_DURATION_SMOOTHING * (tick_duration_us - self.smoothed_us);
        }
        let target = if self.smoothed_us <= self.budget_us {
            1.0
        } else {
            (self.budget_us / self.smoothed_us).clamp(self.floor, 1.0)
        };
        let change = (target - self.factor).clamp(-self.step_max, self.step_max);
        self.factor = (self.factor + change).clamp(self.floor, 1.0);
        self.factor
    }

    /// The current factor (1.0 = real time).
    pub fn factor(&self) -> f64 {
        self.factor
    }

    /// The lowest factor this controller returns.
    pub fn floor(&self) -> f64 {
        self.floor
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn falls_smoothly_to_the_floor_and_recovers() {
        let mut c = TimeDilationController::new(33_333.0, 0.1);
        for _ in 0..50 {
            assert_eq!(c.observe(10_000.0), 1.0);
        }
        let mut previous = 1.0;
        let mut lowest: f64 = 1.0;
        for _ in 0..400 {
            // 20x over budget.
            let f = c.observe(666_666.0);
            assert!(
                previous - f <= TIME_DILATION_STEP_MAX_DEFAULT + 1e-12,
                "smooth"
            );
            assert!(f >= 0.1);
            previous = f;
            lowest = lowest.min(f);
        }
        assert!((lowest - 0.1).abs() < 1e-9, "reaches the floor: {lowest}");
        for _ in 0..400 {
            let f = c.observe(5_000.0);
            assert!(
                f - previous <= TIME_DILATION_STEP_MAX_DEFAULT + 1e-12,
                "smooth"
            );
            previous = f;
        }
        assert_eq!(c.factor(), 1.0, "recovers");
    }

    #[test]
    fn moderate_overload_settles_near_budget_share() {
        let mut c = TimeDilationController::new(10_000.0, 0.1);
        for _ in 0..500 {
            c.observe(20_000.0);
        }
        assert!((c.factor() - 0.5).abs() < 0.01, "{}", c.factor());
        c.observe(f64::NAN);
        assert!((c.factor() - 0.5).abs() < 0.02);
    }
}
