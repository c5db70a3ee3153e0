//! The decoder's likelihood of a pixel value `x` in `[0, 1]` given its logit `l`.
//!
//! The reference experiment's Bernoulli, `log p(x | l) = x log λ + (1 − x) log(1 − λ)`
//! with `λ = sigmoid(l)`, is a density only for `x` in `{0, 1}`: for grey pixels it does not
//! integrate to one, so its "likelihood" is not comparable with papers' (Loaiza-Ganem and
//! Cunningham, NeurIPS 2019). The continuous Bernoulli adds the log of its normaliser
//! `C(λ) = 2 artanh(1 − 2λ) / (1 − 2λ)` (2 at λ = ½), which in terms of the logit is
//! `C = l / tanh(l / 2)`: an even function of `l`, computed here without cancellation near
//! `l = 0` (λ = ½), where the closed form is 0/0.

/// Which likelihood the decoder's logits define.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Likelihood {
    /// The reference's Bernoulli (binary cross-entropy): not normalised for grey pixels.
    #[default]
    Bernoulli,
    /// The continuous Bernoulli: a density on `[0, 1]`, so that bounds are log-densities.
    ContinuousBernoulli,
}

/// Below this `|l|` the normaliser and its derivative use their Taylor series.
const SERIES_BELOW: f64 = 1e-2;

/// `log C` of the continuous Bernoulli with logit `l`: `log(l / tanh(l / 2))`.
pub fn cb_log_normaliser(l: f32) -> f32 {
    let a = f64::from(l).abs();
    if a < SERIES_BELOW {
        // u / tanh u = 1 + u²/3 − u⁴/45 + …, u = a/2, so log C = ln 2 + u²/3 − 7u⁴/90 + O(u⁶).
        let u2 = a * a / 4.0;
        return (std::f64::consts::LN_2 + u2 / 3.0 - 7.0 * u2 * u2 / 90.0) as f32;
    }
    // log tanh(a/2) = log(1 − e^−a) − log(1 + e^−a).
    (a.ln() - (-(-a).exp_m1()).ln() + (-a).exp().ln_1p()) as f32
}

/// `d log C / dl = 1/l − 1/sinh(l)`, an odd function of `l` (0 at `l = 0`).
pub fn cb_log_normaliser_grad(l: f32) -> f32 {
    let l = f64::from(l);
    if l.abs() < SERIES_BELOW {
        return (l / 6.0 - 7.0 * l * l * l / 360.0) as f32;
    }
    (1.0 / l - 1.0 / l.sinh()) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `1 / C(λ) = ∫₀¹ λˣ (1 − λ)¹⁻ˣ dx`, integrated numerically (Simpson, 20,000 panels).
    fn integrated_log_normaliser(lambda: f64) -> f64 {
        let n = 20_000;
        let f = |x: f64| (x * lambda.ln() + (1.0 - x) * (1.0 - lambda).ln()).exp();
        let h = 1.0 / n as f64;
        let inner: f64 = (1..n).map(|i| f(i as f64 * h) * if i % 2 == 1 { 4.0 } else { 2.0 }).sum();
        -((f(0.0) + f(1.0) + inner) * h / 3.0).ln()
    }

    #[test]
    fn the_normaliser_matches_numerical_integration_near_and_far_from_one_half() {
        for l in [-9.0f32, -2.0, -0.3, -0.011, -0.009, -1e-4, 0.0, 1e-6, 0.004, 0.0101, 0.7, 4.0, 12.0] {
            let lambda = 1.0 / (1.0 + (-f64::from(l)).exp());
            let want = integrated_log_normaliser(lambda);
            let got = f64::from(cb_log_normaliser(l));
            assert!((got - want).abs() < 2e-6, "l = {l}: {got} vs {want}");
        }
        // log C(½) = ln 2, and the two sides of the series threshold meet.
        assert!((cb_log_normaliser(0.0) - std::f32::consts::LN_2).abs() < 1e-7);
        let (below, above) = (cb_log_normaliser(0.00999), cb_log_normaliser(0.01001));
        assert!((below - above).abs() < 1e-6, "{below} vs {above}");
    }

    #[test]
    fn the_gradient_is_the_derivative_of_the_normaliser() {
        for l in [-6.0f32, -1.0, -0.02, -0.005, 0.0, 0.003, 0.0099, 0.0101, 0.5, 3.0, 30.0] {
            let h = 1e-3f64;
            let f = |x: f64| {
                let a = x.abs();
                if a == 0.0 { std::f64::consts::LN_2 } else { a.ln() - (a / 2.0).tanh().ln() }
            };
            let numeric = (f(f64::from(l) + h) - f(f64::from(l) - h)) / (2.0 * h);
            let got = f64::from(cb_log_normaliser_grad(l));
            assert!((got - numeric).abs() < 1e-5, "l = {l}: {got} vs {numeric}");
        }
    }
}
