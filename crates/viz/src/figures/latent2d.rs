//! The classic figures of a two-dimensional latent space (`vae-train --latent-dim 2`):
//! the test set's posterior means coloured by class, and the decoder's manifold over the
//! prior's quantiles. Skipped, saying why, for any other latent dimension.

use candle_core::{Device, Tensor};
use vae_data::run::{figure_2d, file};
use vae_data::{NUM_CLASSES, read_npy};

use super::charts::class_scatter;
use super::{Inputs, Outcome, SIDE, flat};
use crate::render::{Grid, grid_canvas};

/// Decodings per side of the manifold grid.
pub const MANIFOLD_SIDE: usize = 20;

/// The inverse of the standard normal CDF, Φ⁻¹(p) for p in (0, 1) (Acklam's rational
/// approximation, relative error below 1.2e-9).
pub fn probit(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969683028665376e1,
        2.209460984245205e2,
        -2.759285104469687e2,
        1.38357751867269e2,
        -3.066479806614716e1,
        2.506628277459239,
    ];
    const B: [f64; 5] =
        [-5.447609879822406e1, 1.615858368580409e2, -1.556989798598866e2, 6.680131188771972e1, -1.328068155288572e1];
    const C: [f64; 6] = [
        -7.784894002430293e-3,
        -3.223964580411365e-1,
        -2.400758277161838,
        -2.549732539343734,
        4.374664141464968,
        2.938163982698783,
    ];
    const D: [f64; 4] = [7.784695709041462e-3, 3.224671290700398e-1, 2.445134137142996, 3.754408661907416];
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    if p < 0.02425 {
        tail((-2.0 * p.ln()).sqrt())
    } else if p > 1.0 - 0.02425 {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    }
}

/// The run's model when its latent space is two-dimensional, else why the figure is skipped.
fn model_2d(inp: &Inputs) -> anyhow::Result<Result<vae_model::Vae, Outcome>> {
    let path = match inp.need(file::MODEL, "vae-train") {
        Ok(p) => p,
        Err(skip) => return Ok(Err(skip)),
    };
    let (vae, _, _) = vae_model::load_vae(&path, &Device::Cpu)?;
    let dim = vae.config().latent_dim;
    if dim != 2 {
        return Ok(Err(Outcome::Skipped(format!("the latent space is {dim}-D; this figure needs --latent-dim 2"))));
    }
    Ok(Ok(vae))
}

/// `latent_scatter.png`: the posterior means of the test images, coloured by class.
pub fn latent_scatter(inp: &Inputs) -> anyhow::Result<Outcome> {
    if let Err(skip) = model_2d(inp)? {
        return Ok(skip);
    }
    let (latents, labels) =
        match (inp.need(file::TEST_LATENTS, "latent-features"), inp.need(file::TEST_LABELS, "latent-features")) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(skip), _) | (_, Err(skip)) => return Ok(skip),
        };
    let (shape, x) = read_npy(&latents)?.into_f32(&latents, &[None, None])?;
    anyhow::ensure!(
        shape[0] > 0 && (shape[1] == 2 || shape[1] == 4),
        "{}: expected the means (and log-variances) of a 2-D latent space, found shape {shape:?}",
        latents.display()
    );
    let (_, y) = read_npy(&labels)?.into_i64(&labels, &[Some(shape[0])])?;
    let means: Vec<f32> = x.chunks(shape[1]).flat_map(|row| [row[0], row[1]]).collect();
    let labels: Vec<usize> = y.iter().map(|&l| l.clamp(0, NUM_CLASSES as i64 - 1) as usize).collect();
    let caption = format!("Posterior means of {} test images, coloured by class", shape[0]);
    let canvas = class_scatter(&caption, ("z₁", "z₂"), &means, &labels, &inp.class_names)?;
    let out = inp.figures.join(figure_2d::LATENT_SCATTER.file);
    canvas.save_png(&out)?;
    Ok(Outcome::Written(vec![out], format!("{} points", shape[0])))
}

/// `latent_manifold.png`: decodings of a 20 × 20 grid over the prior's quantiles,
/// `z = (Φ⁻¹((j + ½)/20), Φ⁻¹((i + ½)/20))`, z₂ growing upwards.
pub fn latent_manifold(inp: &Inputs) -> anyhow::Result<Outcome> {
    let vae = match model_2d(inp)? {
        Ok(vae) => vae,
        Err(skip) => return Ok(skip),
    };
    let n = MANIFOLD_SIDE;
    let quantile = |k: usize| probit((k as f64 + 0.5) / n as f64) as f32;
    let z: Vec<f32> = (0..n * n).flat_map(|i| [quantile(i % n), quantile(n - 1 - i / n)]).collect();
    let images = flat(&vae.decode(&Tensor::from_vec(z, (n * n, 2), &Device::Cpu)?)?)?;
    let tiles: Vec<&[f32]> = images.chunks(SIDE * SIDE).collect();
    let canvas = grid_canvas(&tiles, Grid { cols: n, side: SIDE, scale: 1, gap: 1 });
    let out = inp.figures.join(figure_2d::LATENT_MANIFOLD.file);
    canvas.save_png(&out)?;
    Ok(Outcome::Written(vec![out], format!("{n} × {n} decodings over the prior's quantiles")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probit_inverts_the_normal_cdf() {
        for (p, z) in [(0.5, 0.0), (0.975, 1.959963984540054), (0.025, -1.959963984540054), (0.001, -3.090232306167813)]
        {
            assert!((probit(p) - z).abs() < 1e-8, "Φ⁻¹({p}) = {} ≠ {z}", probit(p));
        }
        let grid: Vec<f64> = (0..20).map(|k| probit((k as f64 + 0.5) / 20.0)).collect();
        assert!(grid.windows(2).all(|w| w[0] < w[1]) && (grid[0] + grid[19]).abs() < 1e-12);
    }
}
