//! The chart figures: the confusion matrix, the loss curves, the t-SNE scatter and the
//! KL per latent dimension.

use std::time::Instant;

use plotters::prelude::*;
use vae_data::run::{EpochRecord, EvalSummary, TsneSummary, figure, file, read_json};
use vae_data::{NUM_CLASSES, read_npy, write_npy_f32};

use super::{CLASS_COLOURS, Inputs, Outcome, class_label};
use crate::render::{Canvas, FONT};
use crate::tsne::{TsneParams, embed, knn_agreement};

/// Cell texts of the confusion heat map: `(row, column, count)`.
pub fn confusion_cells(matrix: &[i64], classes: usize) -> Vec<(usize, usize, String)> {
    (0..classes * classes).map(|i| (i / classes, i % classes, matrix[i].to_string())).collect()
}

/// `confusion.png`: the classifier's confusion matrix as an annotated heat map.
pub fn confusion(inp: &Inputs) -> anyhow::Result<Outcome> {
    let path = match inp.need(file::CONFUSION, "classifier") {
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
    let out = inp.figures.join(figure::CONFUSION.file);
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
/// sampled, and z = the posterior mean), with the published reference's points on MNIST
/// (its test points follow the at-mean convention); and the KL parts.
pub fn loss(inp: &Inputs) -> anyhow::Result<Outcome> {
    let path = match inp.need(file::HISTORY_JSON, "vae-train") {
        Ok(p) => p,
        Err(skip) => return Ok(skip),
    };
    let history: Vec<EpochRecord> = read_json(&path)?;
    let series = |value: fn(&EpochRecord) -> f64| -> Vec<(f64, f64)> {
        history.iter().map(|h| (f64::from(h.epoch), value(h))).collect()
    };
    let (train, test) = (series(|h| h.train_loss), series(|h| h.test_loss));
    if train.is_empty() {
        return Ok(Outcome::Skipped(format!("{} holds no epoch", file::HISTORY_JSON)));
    }
    let curve = |value: fn(&EpochRecord) -> f64, colour: RGBColor, name: &str, dashed: bool| Curve {
        points: series(value),
        colour,
        name: name.to_string(),
        dashed,
    };
    let [blue, orange, green] = [CLASS_COLOURS[0], CLASS_COLOURS[1], CLASS_COLOURS[2]];
    let losses: Vec<Curve> = [
        curve(|h| h.train_loss, blue, "train", false),
        curve(|h| h.test_loss, orange, "test, z sampled", false),
        curve(|h| h.test_loss_at_mean, green, "test, z = mean", true),
    ]
    .into_iter()
    .collect();
    let reference: Vec<Curve> = match &inp.reference {
        None => Vec::new(),
        Some(published) => [(blue, "published train", 1), (green, "published test", 2)]
            .into_iter()
            .map(|(colour, name, column)| Curve {
                points: published
                    .losses
                    .iter()
                    .map(|l| (f64::from(l.0), if column == 1 { l.1 } else { l.2 }))
                    .collect(),
                colour,
                name: name.into(),
                dashed: false,
            })
            .collect(),
    };
    let kl = [curve(|h| h.train_kl, blue, "train KL", false), curve(|h| h.test_kl, orange, "test KL", false)];
    let mut canvas = Canvas::new(1100, 450);
    canvas.draw(|root| -> anyhow::Result<()> {
        let (left, right) = root.split_horizontally(560);
        draw_curves(&left, "Loss per image (BCE + KL)", "loss", &losses, &reference)?;
        draw_curves(&right, "KL part (BCE part = loss − KL)", "KL per image", &kl, &[])
    })?;
    let out = inp.figures.join(figure::LOSS.file);
    canvas.save_png(&out)?;
    let (e, t) = test.last().copied().unwrap_or_default();
    Ok(Outcome::Written(vec![out], format!("{} epochs, final test loss {t:.2} (epoch {e})", train.len())))
}

/// Points `xy` (pairs) coloured by class `labels`, with a legend of the class names.
pub(super) fn class_scatter(
    caption: &str,
    (x_desc, y_desc): (&str, &str),
    xy: &[f32],
    labels: &[usize],
    class_names: &[String],
) -> anyhow::Result<Canvas> {
    let (xs, ys): (Vec<f32>, Vec<f32>) = xy.chunks(2).map(|p| (p[0], p[1])).unzip();
    let range = |v: &[f32]| v.iter().fold((f32::MAX, f32::MIN), |(a, b), &x| (a.min(x), b.max(x)));
    let ((x0, x1), (y0, y1)) = (range(&xs), range(&ys));
    let (px, py) = (((x1 - x0) * 0.05).max(0.1), ((y1 - y0) * 0.05).max(0.1));
    let mut canvas = Canvas::new(900, 820);
    canvas.draw(|root| -> anyhow::Result<()> {
        let mut chart = ChartBuilder::on(root)
            .caption(caption, (FONT, 22))
            .margin(14)
            .x_label_area_size(36)
            .y_label_area_size(46)
            .build_cartesian_2d(x0 - px..x1 + px, y0 - py..y1 + py)?;
        chart.configure_mesh().x_desc(x_desc).y_desc(y_desc).label_style((FONT, 13)).draw()?;
        for (class, colour) in CLASS_COLOURS.iter().enumerate() {
            let pts =
                (0..xs.len()).filter(|&i| labels[i] == class).map(|i| Circle::new((xs[i], ys[i]), 2, colour.filled()));
            chart
                .draw_series(pts)?
                .label(class_label(class, &class_names[class]))
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
    Ok(canvas)
}

/// `tsne.png` and `tsne.npy`: t-SNE of the first `points` test latents, coloured by digit.
pub fn tsne(inp: &Inputs, points: usize, params: TsneParams) -> anyhow::Result<Outcome> {
    let (latents, labels) =
        match (inp.need(file::TEST_LATENTS, "latent-features"), inp.need(file::TEST_LABELS, "latent-features")) {
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
    write_npy_f32(&inp.figures.join(file::TSNE_NPY), &[n, 2], &embedding)?;
    let agreement = knn_agreement(&embedding, 2, &labels, 10);
    let latent_agreement = knn_agreement(&x[..n * dim], dim, &labels, 10);
    let caption = format!("t-SNE of {n} test latents, coloured by class (perplexity {})", params.perplexity);
    let canvas = class_scatter(&caption, ("t-SNE 1", "t-SNE 2"), &embedding, &labels, &inp.class_names)?;
    let out = inp.figures.join(figure::TSNE.file);
    canvas.save_png(&out)?;
    let summary = TsneSummary {
        points: n,
        seconds,
        knn10_label_agreement_embedding: agreement,
        knn10_label_agreement_latent: latent_agreement,
    };
    let mut summary = serde_json::to_value(summary)?;
    summary["params"] = serde_json::to_value(params)?;
    vae_data::write_atomic(&inp.figures.join(file::TSNE_JSON), serde_json::to_string_pretty(&summary)?.as_bytes())?;
    Ok(Outcome::Written(
        vec![out, inp.figures.join(file::TSNE_NPY)],
        format!(
            "{n} points in {seconds:.1} s; 10-NN label agreement {agreement:.4} in 2-D, {latent_agreement:.4} in the latent space"
        ),
    ))
}

/// `kl_per_dimension.png`: the KL divergence of each latent dimension's posterior from
/// the prior (from `eval.json`), the active dimensions coloured; a collapsed dimension
/// (KL near 0) carries no information about the image.
pub fn kl_per_dimension(inp: &Inputs) -> anyhow::Result<Outcome> {
    let path = match inp.need(file::EVAL, "vae-eval") {
        Ok(p) => p,
        Err(skip) => return Ok(skip),
    };
    let eval: EvalSummary = read_json(&path)?;
    let kl = &eval.kl_per_dimension;
    anyhow::ensure!(!kl.is_empty(), "{}: kl_per_dimension is empty", path.display());
    let top = kl.iter().copied().fold(0.0, f64::max).max(1e-3) * 1.15;
    let total: f64 = kl.iter().sum();
    let mut canvas = Canvas::new(760, 420);
    canvas.draw(|root| -> anyhow::Result<()> {
        let caption =
            format!("KL per latent dimension: {total:.2} nats in all, {} of {} active", eval.active_units, kl.len());
        let mut chart = ChartBuilder::on(root)
            .caption(caption, (FONT, 20))
            .margin(14)
            .x_label_area_size(36)
            .y_label_area_size(50)
            .build_cartesian_2d((0..kl.len()).into_segmented(), 0.0..top)?;
        let dimensions = kl.len();
        let dimension_label = |v: &SegmentValue<usize>| match v {
            SegmentValue::CenterOf(d) if *d < dimensions => d.to_string(),
            _ => String::new(),
        };
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_label_formatter(&dimension_label)
            .x_desc("latent dimension")
            .y_desc("KL (nats per image)")
            .label_style((FONT, 13))
            .draw()?;
        // Bars above 0.01 nats in the first class colour, the rest grey.
        chart.draw_series(kl.iter().enumerate().map(|(d, &v)| {
            let colour = if v > 0.01 { CLASS_COLOURS[0] } else { RGBColor(170, 170, 170) };
            let mut bar =
                Rectangle::new([(SegmentValue::Exact(d), 0.0), (SegmentValue::Exact(d + 1), v)], colour.filled());
            bar.set_margin(0, 0, 6, 6);
            bar
        }))?;
        Ok(())
    })?;
    let out = inp.figures.join(figure::KL.file);
    canvas.save_png(&out)?;
    Ok(Outcome::Written(vec![out], format!("{} dimensions, {total:.2} nats of KL", kl.len())))
}
