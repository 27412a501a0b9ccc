//! Restart spacing: exponential growth with a cap and random spread.

use std::time::Duration;

use crate::config::BackoffConfig;

/// The delay before retry number `step` (0-based: step 0 waits `initial`).
///
/// `sample` is a uniform random number in `[-1.0, 1.0]`, passed in so the
/// computation stays pure and testable; the delay is spread by
/// `± jitter × delay` and never exceeds `max` by more than the jitter.
pub fn delay(cfg: &BackoffConfig, step: u32, sample: f64) -> Duration {
    let base = cfg.initial.as_secs_f64() * cfg.multiplier.powi(step.min(1000) as i32);
    let capped = base.min(cfg.max.as_secs_f64());
    let spread = capped * cfg.jitter * sample.clamp(-1.0, 1.0);
    Duration::from_secs_f64((capped + spread).max(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(jitter: f64) -> BackoffConfig {
        BackoffConfig {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
            multiplier: 2.0,
            jitter,
            ..BackoffConfig::default()
        }
    }

    #[test]
    fn grows_exponentially_up_to_max() {
        let c = cfg(0.0);
        let ms: Vec<u128> = (0..6).map(|s| delay(&c, s, 0.7).as_millis()).collect();
        assert_eq!(ms, vec![100, 200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn jitter_stays_within_bounds() {
        let c = cfg(0.1);
        for i in 0..=20 {
            let sample = -1.0 + f64::from(i) / 10.0;
            let d = delay(&c, 1, sample).as_secs_f64();
            assert!((0.18 - 1e-9..=0.22 + 1e-9).contains(&d), "{d} for {sample}");
        }
        assert_eq!(delay(&c, 1, -1.0), Duration::from_secs_f64(0.18));
        assert_eq!(delay(&c, 1, 1.0), Duration::from_secs_f64(0.22));
    }

    #[test]
    fn zero_initial_means_immediate() {
        let c = BackoffConfig {
            initial: Duration::ZERO,
            ..cfg(0.5)
        };
        assert_eq!(delay(&c, 5, 1.0), Duration::ZERO);
    }

    #[test]
    fn huge_step_does_not_overflow() {
        assert_eq!(delay(&cfg(0.0), u32::MAX, 0.0), Duration::from_secs(1));
    }
}
