//! One function per figure. Each reads its inputs from the run directory (or the
//! dataset), and returns the files it wrote, or why it was skipped.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use candle_core::{Device, Tensor};
use plotters::prelude::*;
use vae_data::{IMAGE_SIDE, NUM_CLASSES, SplitKind, load_split, read_npy, seed::SEED_LOSSES, write_npy_f32};
use vae_model::Vae;

use crate::render::{Canvas, FONT, Grid, grid_canvas};
use crate::tsne::{TsneParams, embed, knn_agreement};

/// What happened to one figure.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Written files, and a one-line note of what was measured.
    Written(Vec<PathBuf>, String),
    /// Not drawn, and why (usually a missing input).
    Skipped(String),
}

/// Where a figure finds its inputs and puts its output.
pub struct Inputs<'a> {
    /// The run directory.
    pub run: &'a Path,
    /// The dataset directory.
    pub data: &'a Path,
    /// `run/figures`.
    pub figures: PathBuf,
    /// Names of classes 0–9 (digits for MNIST, garment names for Fashion-MNIST).
    pub class_names: Vec<String>,
    /// Whether the data is MNIST, so that the seed's published losses compare.
    pub seed_comparable: bool,
}

impl Inputs<'_> {
    fn need(&self, name: &str, producer: &str) -> Result<PathBuf, Outcome> {
        let path = self.run.join(name);
        if path.is_file() { Ok(path) } else { Err(Outcome::Skipped(format!("no {name} yet (written by {producer})"))) }
    }
}

const SIDE: usize = IMAGE_SIDE;
const PIXELS: usize = SIDE * SIDE;

/// Ten colours that tell the digits apart (Tableau 10).
pub const CLASS_COLOURS: [RGBColor; NUM_CLASSES] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// How a class is labelled: its name, preceded by its index only where the two differ
/// (`3` for MNIST, `4: Coat` for Fashion-MNIST).
pub fn class_label(index: usize, name: &str) -> String {
    if name == index.to_string() { name.to_string() } else { format!("{index}: {name}") }
}

fn flat(t: &Tensor) -> anyhow::Result<Vec<f32>> {
    Ok(t.flatten_all()?.to_vec1::<f32>()?)
}

/// `originals.png`: the first ten test images of each digit, one row per digit.
pub fn originals(inp: &Inputs) -> anyhow::Result<Outcome> {
    let test = load_split(inp.data, SplitKind::Test).context("loading the test set")?;
    let mut images = Vec::new();
    for digit in 0..NUM_CLASSES as u8 {
        let picked: Vec<usize> = (0..test.len()).filter(|&i| test.labels[i] == digit).take(10).collect();
        images.extend(picked.iter().map(|&i| test.gather_f32(&[i])));
    }
    let refs: Vec<&[f32]> = images.iter().map(Vec::as_slice).collect();
    let path = inp.figures.join("originals.png");
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
    let path = match inp.need("samples.safetensors", "vae-train") {
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
    let path = inp.figures.join("generated.png");
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
    let path = inp.figures.join("progress.png");
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
    let path = inp.figures.join("reconstructions.png");
    canvas.save_png(&path)?;
    Ok(Outcome::Written(vec![path], format!("{n} test images reconstructed (from their means) after {epoch} epochs")))
}

/// Cell texts of the confusion heat map: `(row, column, count)`.
pub fn confusion_cells(matrix: &[i64], classes: usize) -> Vec<(usize, usize, String)> {
    (0..classes * classes).map(|i| (i / classes, i % classes, matrix[i].to_string())).collect()
}

/// `confusion.png`: the classifier's confusion matrix as an annotated heat map.
pub fn confusion(inp: &Inputs) -> anyhow::Result<Outcome> {
    let path = match inp.need("confusion.npy", "classifier") {
        Ok(p) => p,
        Err(skip) => return Ok(skip),
    };
    let k = NUM_CLASSES;
    let (_, matrix) = read_npy(&path)?.into_i64(&path, &[Some(k), Some(k)])?;
    let row_totals: Vec<i64> = matrix.chunks(k).map(|r| r.iter().sum::<i64>().max(1)).collect();
    let (cell, left, top) = (56i32, 150i32, 70i32);
    let size = (left + cell * k as i32 + 20) as u32;
    let mut canvas = Canvas::new(size, (top + cell * k as i32 + 20) as u32);
    canvas.draw(|root| -> Result<(), DrawingAreaErrorKind<_>> {
        root.draw(&Text::new("Confusion matrix (test set)", (left, 12), (FONT, 20).into_font()))?;
        root.draw(&Text::new("predicted class →", (left + 180, 32), (FONT, 15).into_font()))?;
        for (r, c, text) in confusion_cells(&matrix, k) {
            let share = matrix[r * k + c] as f64 / row_totals[r] as f64;
            let shade = (255.0 * (1.0 - share)) as u8;
            let (x, y) = (left + c as i32 * cell, top + r as i32 * cell);
            root.draw(&Rectangle::new([(x, y), (x + cell, y + cell)], RGBColor(shade, shade, 255).filled()))?;
            let colour = if share > 0.5 { WHITE } else { BLACK };
            root.draw(&Text::new(text, (x + 6, y + cell / 2 - 7), (FONT, 14).into_font().color(&colour)))?;
        }
        for d in 0..k as i32 {
            root.draw(&Text::new(d.to_string(), (left + d * cell + cell / 2 - 4, top - 20), (FONT, 15).into_font()))?;
            let name = class_label(d as usize, &inp.class_names[d as usize]);
            root.draw(&Text::new(name, (8, top + d * cell + cell / 2 - 8), (FONT, 14).into_font()))?;
        }
        root.draw(&Text::new("true class ↓", (8, top - 18), (FONT, 15).into_font()))
    })?;
    let out = inp.figures.join("confusion.png");
    canvas.save_png(&out)?;
    let correct: i64 = (0..k).map(|i| matrix[i * k + i]).sum();
    let total: i64 = matrix.iter().sum();
    Ok(Outcome::Written(vec![out], format!("accuracy {:.4}", correct as f64 / total.max(1) as f64)))
}

/// One curve of the loss figure: its points, colour, name and whether it is dashed.
struct Curve {
    points: Vec<(f64, f64)>,
    colour: RGBColor,
    name: String,
    dashed: bool,
}

/// Draws `curves` as lines with a marker on every point (so that a single epoch shows),
/// and `reference` points as triangles, on axes that fit them all.
fn draw_curves<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    caption: &str,
    y_desc: &str,
    curves: &[Curve],
    reference: &[Curve],
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let all = || curves.iter().chain(reference).flat_map(|c| c.points.iter().copied());
    if all().next().is_none() {
        // No axes to fit: say why instead of drawing an empty (or inverted) chart.
        area.draw(&Text::new(format!("{caption}: no values in history.json"), (20, 20), (FONT, 18).into_font()))?;
        return Ok(());
    }
    let last_epoch = all().map(|p| p.0).fold(0.0, f64::max);
    let (lo, hi) = all().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
    let pad = ((hi - lo) * 0.06).max(1.0);
    let mut chart = ChartBuilder::on(area)
        .caption(caption, (FONT, 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(50)
        .build_cartesian_2d(-0.5..last_epoch + 0.5, (lo - pad).max(0.0)..hi + pad)?;
    // Whole epochs only: with few epochs plotters puts ticks between them.
    let epoch_label =
        |x: &f64| if (x - x.round()).abs() < 1e-6 { format!("{}", x.round() as i64) } else { String::new() };
    chart
        .configure_mesh()
        .x_desc("epoch (0-based)")
        .y_desc(y_desc)
        .x_label_formatter(&epoch_label)
        .label_style((FONT, 13))
        .draw()?;
    for curve in curves {
        let (colour, points) = (curve.colour, curve.points.iter().copied());
        let style = colour.stroke_width(2);
        if curve.dashed {
            chart.draw_series(DashedLineSeries::new(points.clone(), 8, 5, style))?;
        } else {
            chart.draw_series(LineSeries::new(points.clone(), style))?;
        }
        chart.draw_series(points.map(move |p| Circle::new(p, 3, colour.filled())))?.label(curve.name.as_str()).legend(
            move |(x, y)| {
                EmptyElement::at((x, y))
                    + PathElement::new(vec![(0, 0), (16, 0)], style)
                    + Circle::new((8, 0), 3, colour.filled())
            },
        );
    }
    for curve in reference {
        let colour = curve.colour;
        chart
            .draw_series(curve.points.iter().map(move |&p| TriangleMarker::new(p, 7, colour.filled())))?
            .label(curve.name.as_str())
            .legend(move |(x, y)| TriangleMarker::new((x + 8, y), 6, colour.filled()));
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.9))
        .label_font((FONT, 13))
        .draw()?;
    Ok(())
}

/// `loss.png`: train and test loss per epoch, the test loss in both conventions (z
/// sampled, and z = the posterior mean), with the seed's published points on MNIST
/// (its test points follow the at-mean convention); and the KL parts.
pub fn loss(inp: &Inputs) -> anyhow::Result<Outcome> {
    let path = match inp.need("history.json", "vae-train") {
        Ok(p) => p,
        Err(skip) => return Ok(skip),
    };
    let history: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?)
            .with_context(|| format!("parsing {}", path.display()))?;
    let series = |key: &str| -> Vec<(f64, f64)> {
        history.iter().filter_map(|h| Some((h["epoch"].as_f64()?, h[key].as_f64()?))).collect()
    };
    let (train, test) = (series("train_loss"), series("test_loss"));
    if train.is_empty() {
        return Ok(Outcome::Skipped("history.json holds no epoch".into()));
    }
    let curve = |key: &str, colour: RGBColor, name: &str, dashed: bool| Curve {
        points: series(key),
        colour,
        name: name.to_string(),
        dashed,
    };
    let [blue, orange, green] = [CLASS_COLOURS[0], CLASS_COLOURS[1], CLASS_COLOURS[2]];
    let losses: Vec<Curve> = [
        curve("train_loss", blue, "train", false),
        curve("test_loss", orange, "test, z sampled", false),
        curve("test_loss_at_mean", green, "test, z = mean", true),
    ]
    .into_iter()
    .filter(|c| !c.points.is_empty())
    .collect();
    let seed: &[(u32, f64, f64)] = if inp.seed_comparable { &SEED_LOSSES } else { &[] };
    let reference: Vec<Curve> = if seed.is_empty() {
        Vec::new()
    } else {
        vec![
            Curve {
                points: seed.iter().map(|s| (f64::from(s.0), s.1)).collect(),
                colour: blue,
                name: "seed train".into(),
                dashed: false,
            },
            Curve {
                points: seed.iter().map(|s| (f64::from(s.0), s.2)).collect(),
                colour: green,
                name: "seed test".into(),
                dashed: false,
            },
        ]
    };
    let kl = [curve("train_kl", blue, "train KL", false), curve("test_kl", orange, "test KL", false)];
    let mut canvas = Canvas::new(1100, 450);
    canvas.draw(|root| -> anyhow::Result<()> {
        let (left, right) = root.split_horizontally(560);
        draw_curves(&left, "Loss per image (BCE + KL)", "loss", &losses, &reference)?;
        draw_curves(&right, "KL part (BCE part = loss − KL)", "KL per image", &kl, &[])
    })?;
    let out = inp.figures.join("loss.png");
    canvas.save_png(&out)?;
    let (e, t) = test.last().copied().unwrap_or_default();
    Ok(Outcome::Written(vec![out], format!("{} epochs, final test loss {t:.2} (epoch {e})", train.len())))
}

/// The model of the run and the posterior means of test images `indices`.
fn encode_test_images(inp: &Inputs, indices: &[usize]) -> anyhow::Result<Option<(Vae, Vec<Vec<f32>>)>> {
    let Ok(path) = inp.need("model.safetensors", "vae-train") else { return Ok(None) };
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
    let out = inp.figures.join("latent_traversal.png");
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
    let out = inp.figures.join("interpolation.png");
    labelled_grid(&images, steps, &rows, &[], left)?.save_png(&out)?;
    Ok(Outcome::Written(vec![out], format!("{steps} steps between the latent means of {note}")))
}

/// `tsne.png` and `tsne.npy`: t-SNE of the first `points` test latents, coloured by digit.
pub fn tsne(inp: &Inputs, points: usize, params: TsneParams) -> anyhow::Result<Outcome> {
    let (latents, labels) =
        match (inp.need("test_latents.npy", "latent-features"), inp.need("test_labels.npy", "latent-features")) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(skip), _) | (_, Err(skip)) => return Ok(skip),
        };
    let (shape, x) = read_npy(&latents)?.into_f32(&latents, &[None, None])?;
    anyhow::ensure!(shape[0] > 0 && shape[1] > 0, "{}: no latents to embed (shape {shape:?})", latents.display());
    let (_, y) = read_npy(&labels)?.into_i64(&labels, &[Some(shape[0])])?;
    let n = points.min(shape[0]);
    let dim = shape[1];
    let labels: Vec<usize> = y[..n].iter().map(|&l| l.clamp(0, NUM_CLASSES as i64 - 1) as usize).collect();
    let started = Instant::now();
    let embedding = embed(&x[..n * dim], dim, params)?;
    let seconds = started.elapsed().as_secs_f64();
    write_npy_f32(&inp.figures.join("tsne.npy"), &[n, 2], &embedding)?;
    let agreement = knn_agreement(&embedding, 2, &labels, 10);
    let latent_agreement = knn_agreement(&x[..n * dim], dim, &labels, 10);
    let (xs, ys): (Vec<f32>, Vec<f32>) = embedding.chunks(2).map(|p| (p[0], p[1])).unzip();
    let range = |v: &[f32]| v.iter().fold((f32::MAX, f32::MIN), |(a, b), &x| (a.min(x), b.max(x)));
    let ((x0, x1), (y0, y1)) = (range(&xs), range(&ys));
    let mut canvas = Canvas::new(900, 820);
    canvas.draw(|root| -> anyhow::Result<()> {
        let mut chart = ChartBuilder::on(root)
            .caption(
                format!("t-SNE of {n} test latents, coloured by class (perplexity {})", params.perplexity),
                (FONT, 22),
            )
            .margin(14)
            .x_label_area_size(36)
            .y_label_area_size(46)
            .build_cartesian_2d(x0 - 1.0..x1 + 1.0, y0 - 1.0..y1 + 1.0)?;
        chart.configure_mesh().x_desc("t-SNE 1").y_desc("t-SNE 2").label_style((FONT, 13)).draw()?;
        for (digit, colour) in CLASS_COLOURS.iter().enumerate() {
            let pts = (0..n).filter(|&i| labels[i] == digit).map(|i| Circle::new((xs[i], ys[i]), 2, colour.filled()));
            chart
                .draw_series(pts)?
                .label(class_label(digit, &inp.class_names[digit]))
                .legend(move |(x, y)| Circle::new((x + 6, y), 5, colour.filled()));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .border_style(BLACK)
            .background_style(WHITE.mix(0.85))
            .label_font((FONT, 13))
            .draw()?;
        Ok(())
    })?;
    let out = inp.figures.join("tsne.png");
    canvas.save_png(&out)?;
    let summary = serde_json::json!({
        "points": n, "seconds": seconds, "params": params,
        "knn10_label_agreement_embedding": agreement, "knn10_label_agreement_latent": latent_agreement,
    });
    vae_data::write_atomic(&inp.figures.join("tsne.json"), serde_json::to_string_pretty(&summary)?.as_bytes())?;
    Ok(Outcome::Written(
        vec![out, inp.figures.join("tsne.npy")],
        format!(
            "{n} points in {seconds:.1} s; 10-NN label agreement {agreement:.4} in 2-D, {latent_agreement:.4} in the latent space"
        ),
    ))
}
