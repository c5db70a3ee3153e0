//! Training recipes: the learning rate of every optimisation step (constant, cosine or
//! step decay, after an optional linear warm-up), and the named presets.

use std::f64::consts::PI;

/// How the learning rate changes over the run (after the warm-up).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LrSchedule {
    /// `--lr` throughout (the reference's).
    Constant,
    /// Half a cosine from `--lr` down to `--lr × --lr-final-fraction` at the last step.
    Cosine,
    /// `--lr` multiplied by `--lr-step-gamma` every `--lr-step-epochs` epochs.
    Step,
}

/// The learning rate of each optimisation step, fixed at the start of a run.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LrPlan {
    /// The peak learning rate (`--lr`).
    pub base: f64,
    /// The decay after the warm-up.
    pub schedule: LrSchedule,
    /// Steps of linear warm-up from `base / warmup_steps` to `base`. This and
    /// `total_steps` count steps at the run's main batch size (see `initial_step_length`).
    pub warmup_steps: u64,
    /// Steps of the whole run: the cosine's length (0 for the other schedules, whose
    /// rates do not depend on how long the run is).
    pub total_steps: u64,
    /// Cosine: the final rate as a fraction of `base`.
    pub final_fraction: f64,
    /// Step decay: steps between two decays (0 for the other schedules).
    pub step_every: u64,
    /// Step decay: the factor of each decay.
    pub gamma: f64,
    /// Steps of the initial phase at a different batch size (0 without one, as in
    /// checkpoints made before the choice existed).
    #[serde(default)]
    pub initial_steps: u64,
    /// The factor of the rate during the initial phase: sqrt(its batch / the batch).
    #[serde(default = "one")]
    pub initial_scale: f64,
    /// How far along the schedule one step of the initial phase moves, in steps at the
    /// main batch size: its batch / the batch, so that the warm-up and the cosine follow
    /// the epochs whatever their batch size.
    #[serde(default = "one")]
    pub initial_step_length: f64,
}

fn one() -> f64 {
    1.0
}

impl LrPlan {
    /// The learning rate of optimisation step `step` (0-based).
    pub fn at(&self, step: u64) -> f64 {
        if step < self.initial_steps {
            return self.scheduled(step as f64 * self.initial_step_length, step) * self.initial_scale;
        }
        // Exactly `step` without an initial phase (the offset is then 0).
        let offset = self.initial_steps as f64 * (1.0 - self.initial_step_length);
        self.scheduled(step as f64 - offset, step)
    }

    /// The warm-up and the decay at `position` along the schedule (in steps at the main
    /// batch size), before the initial phase's scaling; the step decay counts `step`s,
    /// having no initial phase.
    fn scheduled(&self, position: f64, step: u64) -> f64 {
        let warmup = self.warmup_steps as f64;
        if position < warmup {
            return self.base * (position + 1.0) / warmup;
        }
        let after = position - warmup;
        match self.schedule {
            LrSchedule::Constant => self.base,
            LrSchedule::Cosine => {
                let span = self.total_steps.saturating_sub(self.warmup_steps).max(1);
                let progress = (after / span as f64).min(1.0);
                let low = self.base * self.final_fraction;
                low + (self.base - low) * 0.5 * (1.0 + (PI * progress).cos())
            }
            LrSchedule::Step => self.base * self.gamma.powi((step / self.step_every.max(1)) as i32),
        }
    }
}

/// The weight β of the KL term of each optimisation step: a β-VAE's `β`, reached by a
/// linear ramp from 0 over `warmup_steps` (KL annealing); `β = 1` without a ramp is the VAE.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct KlPlan {
    /// The final weight (`--beta`).
    pub beta: f64,
    /// Steps of the ramp from `beta / warmup_steps` to `beta`.
    pub warmup_steps: u64,
}

impl KlPlan {
    /// The KL weight of optimisation step `step` (0-based).
    pub fn at(&self, step: u64) -> f64 {
        if step < self.warmup_steps { self.beta * (step + 1) as f64 / self.warmup_steps as f64 } else { self.beta }
    }
}

/// A named set of training settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum Recipe {
    /// The published reference experiment's stated settings: batch 32, Adam at a constant
    /// 1e-3, no warm-up, no weight average, the plain VAE objective (β = 1). `seed` (the
    /// experiment this project started from) is accepted too.
    #[value(alias = "seed")]
    Reference,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(schedule: LrSchedule, warmup_steps: u64) -> LrPlan {
        let (initial_steps, initial_scale, initial_step_length) = (0, 1.0, 1.0);
        LrPlan {
            base: 1e-3,
            schedule,
            warmup_steps,
            total_steps: 110,
            final_fraction: 0.1,
            step_every: 20,
            gamma: 0.5,
            initial_steps,
            initial_scale,
            initial_step_length,
        }
    }

    /// `plan`'s rate at a fractional position along it (the warm-up's and the cosine's
    /// formulas, written out).
    fn warm_cosine(plan: &LrPlan, position: f64) -> f64 {
        let warmup = plan.warmup_steps as f64;
        if position < warmup {
            return plan.base * (position + 1.0) / warmup;
        }
        let progress = (position - warmup) / (plan.total_steps as f64 - warmup);
        let low = plan.base * plan.final_fraction;
        low + (plan.base - low) * 0.5 * (1.0 + (PI * progress).cos())
    }

    #[test]
    fn schedules_follow_their_formulas() {
        let constant = plan(LrSchedule::Constant, 0);
        assert!((0..200).all(|t| constant.at(t) == 1e-3));
        let warm = plan(LrSchedule::Constant, 10);
        assert_eq!(warm.at(0), 1e-4);
        assert!((warm.at(4) - 5e-4).abs() < 1e-18 && warm.at(9) == 1e-3 && warm.at(50) == 1e-3);
        let cosine = plan(LrSchedule::Cosine, 10);
        assert_eq!(cosine.at(10), 1e-3, "the cosine starts at the peak after the warm-up");
        assert!((cosine.at(60) - 0.55e-3).abs() < 1e-12, "half way: the mean of peak and floor");
        assert!((cosine.at(110) - 1e-4).abs() < 1e-15 && (cosine.at(500) - 1e-4).abs() < 1e-15);
        assert!((10..110).all(|t| cosine.at(t + 1) <= cosine.at(t)), "decreasing");
        // An initial phase of 40 steps at a quarter of the batch: 10 steps along the
        // schedule, at half the rate; the steps after it continue from there.
        let initial = LrPlan { initial_steps: 40, initial_scale: 0.5, initial_step_length: 0.25, ..cosine.clone() };
        assert!((0..40).all(|t| (initial.at(t) - 0.5 * warm_cosine(&cosine, t as f64 / 4.0)).abs() < 1e-15));
        assert!((40..200).all(|t| (initial.at(t) - cosine.at(t - 30)).abs() < 1e-15));
        let step = plan(LrSchedule::Step, 0);
        assert_eq!((step.at(19), step.at(20), step.at(45)), (1e-3, 5e-4, 2.5e-4));
        let kl = KlPlan { beta: 4.0, warmup_steps: 8 };
        assert_eq!((kl.at(0), kl.at(3), kl.at(7), kl.at(100)), (0.5, 2.0, 4.0, 4.0));
        assert!((0..50).all(|t| KlPlan { beta: 1.0, warmup_steps: 0 }.at(t) == 1.0));
    }
}
