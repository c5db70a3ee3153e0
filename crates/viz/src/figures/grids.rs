//! The image-grid figures: real images, prior draws, reconstructions, traversals and
//! interpolations.

use std::collections::HashMap;

use anyhow::Context;
use candle_core::{Device, Tensor};
use plotters::prelude::*;
use vae_data::run::{figure, file};
use vae_data::{NUM_CLASSES, SplitKind, load_split};
use vae_model::Vae;

use super::{Inputs, Outcome, PIXELS, SIDE, flat};
use crate::render::{Canvas, FONT, Grid, grid_canvas};

/// `originals.png`: the first ten test images of each digit, one row per digit.
pub fn originals(inp: &Inputs) -> anyhow::Result<Outcome> {
    let test = load_split(inp.data, SplitKind::Test).context("loading the test set")?;
    let mut images = Vec::new();
    for digit in 0..NUM_CLASSES as u8 {
        let picked: Vec<usize> = (0..test.len()).filter(|&i| test.labels[i] == digit).take(10).collect();
        images.extend(picked.iter().map(|&i| test.gather_f32(&[i])));
    }
    let refs: Vec<&[f32]> = images.iter().map(Vec::as_slice).collect();
    let path = inp.figures.join(figure::ORIGINALS.file);
    grid_canvas(&refs, Grid { cols: 10, side: SIDE, scale: 2, gap: 2 }).save_png(&path)?;
    Ok(Outcome::Written(vec![path], format!("{} test images, one row per class", refs.len())))
}

/// The snapshots in `samples.safetensors`: epoch → tensor, for tensors named `{prefix}.epoch_{k}`.
fn snapshots(samples: &HashMap<String, Tensor>, prefix: &str) -> Vec<(u32, Tensor)> {
    let mut out: Vec<(u32, Tensor)> = samples
        .iter()
        .filter_map(|(name, t)| {
            let epoch = name.strip_prefix(prefix)?.strip_prefix(".epoch_")?.parse().ok()?;
            Some((epoch, t.clone()))
        })
        .collect();
    out.sort_by_key(|(e, _)| *e);
    out
}

/// The snapshots of `samples.safetensors`, or why the figure is skipped (no file yet).
/// A damaged file, or image tensors that are not `f32` `(N ≥ 1, 1, 28, 28)`, is an error.
fn load_samples(inp: &Inputs) -> anyhow::Result<Result<HashMap<String, Tensor>, Outcome>> {
    let path = match inp.need(file::SAMPLES, "vae-train") {
        Ok(path) => path,
        Err(skip) => return Ok(Err(skip)),
    };
    let (tensors, _) = vae_model::read_tensors(&path, &Device::Cpu)?;
    for (name, t) in tensors.iter().filter(|(name, _)| name.as_str() != "z") {
        let dims = t.dims();
        anyhow::ensure!(
            t.dtype() == candle_core::DType::F32 && dims.len() == 4 && dims[0] > 0 && dims[1..] == [1, SIDE, SIDE],
            "{}: tensor '{name}' is {:?} {dims:?}, expected F32 [N ≥ 1, 1, {SIDE}, {SIDE}] images",
            path.display(),
            t.dtype()
        );
    }
    Ok(Ok(tensors))
}

fn images_of(t: &Tensor) -> anyhow::Result<Vec<Vec<f32>>> {
    Ok(flat(t)?.chunks(PIXELS).map(<[f32]>::to_vec).collect())
}

/// `generated.png`: the fixed prior draws decoded by the final model.
pub fn generated(inp: &Inputs) -> anyhow::Result<Outcome> {
    let samples = match load_samples(inp)? {
        Ok(s) => s,
        Err(skip) => return Ok(skip),
    };
    let Some((epoch, last)) = snapshots(&samples, "generated").pop() else {
        return Ok(Outcome::Skipped("samples.safetensors holds no generated snapshot".into()));
    };
    let images = images_of(&last)?;
    let refs: Vec<&[f32]> = images.iter().map(Vec::as_slice).collect();
    let path = inp.figures.join(figure::GENERATED.file);
    grid_canvas(&refs, Grid { cols: 8, side: SIDE, scale: 2, gap: 2 }).save_png(&path)?;
    Ok(Outcome::Written(vec![path], format!("{} prior draws decoded after {epoch} epochs", refs.len())))
}

/// `progress.png`: the same prior draws decoded before training and after epochs 5, 10,
/// 15, 20 (those that exist, and the last), side by side; plus `generated_epoch_K.png`.
pub fn progress(inp: &Inputs) -> anyhow::Result<Outcome> {
    let samples = match load_samples(inp)? {
        Ok(s) => s,
        Err(skip) => return Ok(skip),
    };
    let all = snapshots(&samples, "generated");
    let last = all.last().map(|(e, _)| *e).unwrap_or(0);
    let chosen: Vec<&(u32, Tensor)> = all.iter().filter(|(e, _)| e % 5 == 0 || *e == last).collect();
    if chosen.is_empty() {
        return Ok(Outcome::Skipped("samples.safetensors holds no generated snapshot".into()));
    }
    let grid = Grid { cols: 8, side: SIDE, scale: 1, gap: 2 };
    let (gw, gh) = grid.size(64);
    let header = 28;
    let mut canvas = Canvas::new(chosen.len() as u32 * (gw + 10) + 10, gh + header + 10);
    let mut written = Vec::new();
    for (col, (epoch, tensor)) in chosen.iter().enumerate() {
        let images = images_of(tensor)?;
        let refs: Vec<&[f32]> = images.iter().map(Vec::as_slice).collect();
        let x = 10 + col as u32 * (gw + 10);
        grid.draw(&mut canvas, &refs, x, header);
        let label = match epoch {
            0 => "before training".to_string(),
            1 => "after 1 epoch".to_string(),
            _ => format!("after {epoch} epochs"),
        };
        canvas.draw(|root| root.draw(&Text::new(label, (x as i32 + 4, 6), (FONT, 16).into_font())))?;
    }
    for (epoch, tensor) in &all {
        let images = images_of(tensor)?;
        let refs: Vec<&[f32]> = images.iter().map(Vec::as_slice).collect();
        let path = inp.figures.join(format!("generated_epoch_{epoch}.png"));
        grid_canvas(&refs, Grid { cols: 8, side: SIDE, scale: 2, gap: 2 }).save_png(&path)?;
        written.push(path);
    }
    let path = inp.figures.join(figure::PROGRESS.file);
    canvas.save_png(&path)?;
    written.insert(0, path);
    let epochs: Vec<String> = chosen.iter().map(|(e, _)| e.to_string()).collect();
    Ok(Outcome::Written(written, format!("snapshots after {} epochs", epochs.join(", "))))
}

/// `reconstructions.png`: fixed test images above their reconstructions by the final model.
pub fn reconstructions(inp: &Inputs) -> anyhow::Result<Outcome> {
    let samples = match load_samples(inp)? {
        Ok(s) => s,
        Err(skip) => return Ok(skip),
    };
    let (Some(originals), Some((epoch, recon))) =
        (samples.get("originals"), snapshots(&samples, "reconstructed").pop())
    else {
        return Ok(Outcome::Skipped("samples.safetensors holds no reconstructions".into()));
    };
    let (top, bottom) = (images_of(originals)?, images_of(&recon)?);
    let n = top.len();
    let grid = Grid { cols: n, side: SIDE, scale: 2, gap: 2 };
    let (gw, gh) = grid.size(n);
    let left = 130;
    let mut canvas = Canvas::new(gw + left, 2 * gh + 10);
    canvas.rgb.fill(255);
    grid.draw(&mut canvas, &top.iter().map(Vec::as_slice).collect::<Vec<_>>(), left, 0);
    grid.draw(&mut canvas, &bottom.iter().map(Vec::as_slice).collect::<Vec<_>>(), left, gh + 10);
    canvas.draw(|root| {
        root.draw(&Text::new("test images", (8, gh as i32 / 2 - 8), (FONT, 16).into_font()))?;
        root.draw(&Text::new("reconstructed", (8, gh as i32 * 3 / 2), (FONT, 16).into_font()))
    })?;
    let path = inp.figures.join(figure::RECONSTRUCTIONS.file);
    canvas.save_png(&path)?;
    Ok(Outcome::Written(vec![path], format!("{n} test images reconstructed (from their means) after {epoch} epochs")))
}

/// The model of the run and the posterior means of test images `indices`.
fn encode_test_images(inp: &Inputs, indices: &[usize]) -> anyhow::Result<Option<(Vae, Vec<Vec<f32>>)>> {
    let Ok(path) = inp.need(file::MODEL, "vae-train") else { return Ok(None) };
    let device = Device::Cpu;
    let (vae, _, _) = vae_model::load_vae(&path, &device)?;
    let test = load_split(inp.data, SplitKind::Test).context("loading the test set")?;
    let x = Tensor::from_vec(test.gather_f32(indices), (indices.len(), 1, SIDE, SIDE), &device)?;
    let (mu, _) = vae.encode(&x)?;
    let latent = vae.config().latent_dim;
    Ok(Some((vae, flat(&mu)?.chunks(latent).map(<[f32]>::to_vec).collect())))
}

/// Decodes latent codes (each of the model's latent dimension).
fn decode_all(vae: &Vae, codes: &[Vec<f32>]) -> anyhow::Result<Vec<Vec<f32>>> {
    let dim = vae.config().latent_dim;
    let z = Tensor::from_vec(codes.concat(), (codes.len(), dim), &Device::Cpu)?;
    images_of(&vae.decode(&z)?)
}

/// Draws decoded rows with a label per row (in a margin `left` pixels wide) and
/// optionally one per column.
fn labelled_grid(
    images: &[Vec<f32>],
    cols: usize,
    rows: &[String],
    columns: &[String],
    left: u32,
) -> anyhow::Result<Canvas> {
    let grid = Grid { cols, side: SIDE, scale: 2, gap: 2 };
    let (gw, gh) = grid.size(images.len());
    let top = if columns.is_empty() { 0 } else { 30 };
    let mut canvas = Canvas::new(gw + left, gh + top);
    grid.draw(&mut canvas, &images.iter().map(Vec::as_slice).collect::<Vec<_>>(), left, top);
    canvas.draw(|root| -> Result<(), DrawingAreaErrorKind<_>> {
        for (i, label) in columns.iter().enumerate() {
            let x = left as i32 + grid.origin(i).0 as i32 + 12;
            root.draw(&Text::new(label.as_str(), (x, 8), (FONT, 13).into_font()))?;
        }
        for (r, label) in rows.iter().enumerate() {
            let y = top as i32 + grid.origin(r * cols).1 as i32 + 20;
            root.draw(&Text::new(label.as_str(), (8, y), (FONT, 15).into_font()))?;
        }
        Ok(())
    })?;
    Ok(canvas)
}

/// `latent_traversal.png`: one test digit's mean, one latent dimension per row varied
/// over −3…3, decoded.
pub fn traversal(inp: &Inputs) -> anyhow::Result<Outcome> {
    let Some((vae, means)) = encode_test_images(inp, &[0])? else {
        return Ok(Outcome::Skipped("no model.safetensors yet (written by vae-train)".into()));
    };
    let mu = &means[0];
    let steps: Vec<f32> = (0..9).map(|i| -3.0 + 0.75 * i as f32).collect();
    let codes: Vec<Vec<f32>> = (0..mu.len())
        .flat_map(|d| {
            steps.iter().map(move |&v| {
                let mut z = mu.clone();
                z[d] = v;
                z
            })
        })
        .collect();
    let images = decode_all(&vae, &codes)?;
    let rows: Vec<String> = (0..mu.len()).map(|d| format!("z{d}")).collect();
    let columns: Vec<String> = steps.iter().map(|v| format!("{v:+.2}")).collect();
    let out = inp.figures.join(figure::TRAVERSAL.file);
    labelled_grid(&images, steps.len(), &rows, &columns, 70)?.save_png(&out)?;
    Ok(Outcome::Written(vec![out], format!("{} dimensions × {} values around test digit 0", mu.len(), steps.len())))
}

/// `interpolation.png`: decodings along the straight line between the latent means of
/// two test images of different classes (the first test image of each class d and d+1).
pub fn interpolation(inp: &Inputs) -> anyhow::Result<Outcome> {
    let test = load_split(inp.data, SplitKind::Test).context("loading the test set")?;
    let first = |digit: u8| test.labels.iter().position(|&l| l == digit);
    let pairs: Vec<(u8, u8)> = [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]
        .into_iter()
        .filter(|&(a, b)| first(a).is_some() && first(b).is_some())
        .collect();
    let indices: Vec<usize> = pairs.iter().flat_map(|&(a, b)| [first(a), first(b)]).flatten().collect();
    let Some((vae, means)) = encode_test_images(inp, &indices)? else {
        return Ok(Outcome::Skipped("no model.safetensors yet (written by vae-train)".into()));
    };
    let steps = 10;
    let codes: Vec<Vec<f32>> = means
        .chunks(2)
        .flat_map(|pair| {
            (0..steps).map(move |s| {
                let t = s as f32 / (steps - 1) as f32;
                pair[0].iter().zip(&pair[1]).map(|(a, b)| a + t * (b - a)).collect()
            })
        })
        .collect();
    let images = decode_all(&vae, &codes)?;
    let rows: Vec<String> = pairs
        .iter()
        .map(|&(a, b)| format!("{} → {}", inp.class_names[a as usize], inp.class_names[b as usize]))
        .collect();
    let note = rows.join(", ");
    let left = rows.iter().map(|r| r.chars().count() as u32 * 8 + 16).max().unwrap_or(0).max(70);
    let out = inp.figures.join(figure::INTERPOLATION.file);
    labelled_grid(&images, steps, &rows, &[], left)?.save_png(&out)?;
    Ok(Outcome::Written(vec![out], format!("{steps} steps between the latent means of {note}")))
}
