//! One function per figure. Each reads its inputs from the run directory (or the
//! dataset), and returns the files it wrote, or why it was skipped.

use std::path::{Path, PathBuf};

use candle_core::Tensor;
use plotters::prelude::*;
use vae_data::run::Reference;
use vae_data::{IMAGE_SIDE, NUM_CLASSES};

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
    /// The published reference's figures, when the data is MNIST and they compare.
    pub reference: Option<Reference>,
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

mod charts;
mod grids;
mod latent2d;

pub use charts::{confusion, confusion_cells, kl_per_dimension, loss, tsne};
pub use grids::{generated, interpolation, originals, progress, reconstructions, traversal};
pub use latent2d::{MANIFOLD_SIDE, latent_manifold, latent_scatter, probit};
