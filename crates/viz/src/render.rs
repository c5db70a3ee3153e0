//! Pixel canvases: image grids, text with the embedded DejaVu font, and atomic PNG output.

use std::path::Path;
use std::sync::Once;

use plotters::prelude::*;
use plotters::style::FontStyle;

/// The font family every figure uses (DejaVu Sans, compiled in: no system fonts needed).
pub const FONT: &str = "sans-serif";

/// Registers the embedded font with plotters (once per process).
pub fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The font is valid TrueType compiled into the binary; failure cannot happen.
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular());
    });
}

/// An RGB image, row-major, 3 bytes per pixel.
#[derive(Debug, Clone, PartialEq)]
pub struct Canvas {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// `width · height · 3` bytes.
    pub rgb: Vec<u8>,
}

impl Canvas {
    /// A white canvas.
    pub fn new(width: u32, height: u32) -> Self {
        Self { width, height, rgb: vec![255; (width * height * 3) as usize] }
    }

    /// The grey value at `(x, y)` (the red channel).
    pub fn grey(&self, x: u32, y: u32) -> u8 {
        self.rgb[((y * self.width + x) * 3) as usize]
    }

    /// Copies a square grey image (`side²` values in `[0, 1]`) with its top-left corner at
    /// `(x, y)`, each source pixel becoming a `scale × scale` block of `round(v · 255)`.
    pub fn blit(&mut self, image: &[f32], side: usize, x: u32, y: u32, scale: u32) {
        for (i, &v) in image.iter().enumerate() {
            let g = (v.clamp(0.0, 1.0) * 255.0).round() as u8;
            let (px, py) = ((i % side) as u32 * scale + x, (i / side) as u32 * scale + y);
            for dy in 0..scale {
                for dx in 0..scale {
                    let at = (((py + dy) * self.width + px + dx) * 3) as usize;
                    self.rgb[at..at + 3].fill(g);
                }
            }
        }
    }

    /// Draws with plotters on this canvas.
    pub fn draw<E: std::fmt::Debug>(
        &mut self,
        f: impl FnOnce(&DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>) -> Result<(), E>,
    ) -> anyhow::Result<()> {
        register_font();
        let root = BitMapBackend::with_buffer(&mut self.rgb, (self.width, self.height)).into_drawing_area();
        f(&root).map_err(|e| anyhow::anyhow!("drawing failed: {e:?}"))?;
        root.present().map_err(|e| anyhow::anyhow!("drawing failed: {e:?}"))?;
        Ok(())
    }

    /// Writes the canvas as PNG, atomically.
    pub fn save_png(&self, path: &Path) -> anyhow::Result<()> {
        vae_data::write_atomic_with(path, |tmp| {
            image::save_buffer_with_format(
                tmp,
                &self.rgb,
                self.width,
                self.height,
                image::ColorType::Rgb8,
                image::ImageFormat::Png,
            )
            .map_err(std::io::Error::other)
        })?;
        Ok(())
    }
}

/// Layout of a grid of square tiles.
#[derive(Debug, Clone, Copy)]
pub struct Grid {
    /// Tiles per row.
    pub cols: usize,
    /// Source image side in pixels.
    pub side: usize,
    /// Magnification of each pixel.
    pub scale: u32,
    /// Gap between tiles in canvas pixels.
    pub gap: u32,
}

impl Grid {
    /// Canvas pixels one tile plus its gap takes.
    pub fn pitch(&self) -> u32 {
        self.side as u32 * self.scale + self.gap
    }

    /// Size in canvas pixels of a grid of `n` tiles.
    pub fn size(&self, n: usize) -> (u32, u32) {
        let rows = n.div_ceil(self.cols) as u32;
        (self.cols as u32 * self.pitch() + self.gap, rows * self.pitch() + self.gap)
    }

    /// Top-left canvas position of tile `i`, relative to the grid's origin.
    pub fn origin(&self, i: usize) -> (u32, u32) {
        ((i % self.cols) as u32 * self.pitch() + self.gap, (i / self.cols) as u32 * self.pitch() + self.gap)
    }

    /// Draws `images` (each `side²` values in `[0, 1]`) with the grid's origin at `(x, y)`.
    pub fn draw(&self, canvas: &mut Canvas, images: &[&[f32]], x: u32, y: u32) {
        for (i, img) in images.iter().enumerate() {
            let (ox, oy) = self.origin(i);
            canvas.blit(img, self.side, x + ox, y + oy, self.scale);
        }
    }
}

/// A canvas holding just a grid of `images`, on a dark background as MNIST is shown.
pub fn grid_canvas(images: &[&[f32]], grid: Grid) -> Canvas {
    let (w, h) = grid.size(images.len());
    let mut canvas = Canvas::new(w, h);
    canvas.rgb.fill(64);
    grid.draw(&mut canvas, images, 0, 0);
    canvas
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_tiles_hold_the_source_pixels_scaled_to_255() {
        let a: Vec<f32> = (0..16).map(|i| i as f32 / 15.0).collect();
        let b = vec![1.0f32; 16];
        let grid = Grid { cols: 2, side: 4, scale: 2, gap: 1 };
        let canvas = grid_canvas(&[&a, &b, &a], grid);
        assert_eq!((canvas.width, canvas.height), (2 * 9 + 1, 2 * 9 + 1));
        for (i, img) in [&a, &b, &a].iter().enumerate() {
            let (ox, oy) = grid.origin(i);
            for (p, &v) in img.iter().enumerate() {
                let (x, y) = (ox + (p % 4) as u32 * 2, oy + (p / 4) as u32 * 2);
                let expected = (v * 255.0).round() as u8;
                assert_eq!(canvas.grey(x, y), expected, "tile {i} pixel {p}");
                assert_eq!(canvas.grey(x + 1, y + 1), expected, "scaled block");
            }
        }
        assert_eq!(canvas.grey(0, 0), 64, "gap keeps the background");
    }
}
