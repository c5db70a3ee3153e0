//! The model's layers: `Linear`, and stride-1 unpadded convolutions as im2col/col2im + batched matrix products.
//!
//! candle's CPU `conv2d` backward and `conv_transpose2d` are direct loops parallelised
//! only over output channels, several times slower than the matrix products they amount
//! to. Here, on the CPU, a convolution is `W · im2col(x)` and a transposed convolution
//! is `col2im(Wᵀ · x)`, with `im2col` and `col2im` as custom candle ops that are each
//! other's backward pass; the products run on candle's multi-threaded GEMM and
//! autograd handles the rest. Other devices use candle's own kernels. The weights keep
//! PyTorch's layouts: Conv2d `(out, in, k, k)`, ConvTranspose2d `(in, out, k, k)`.
//! Tests check both layers against candle's kernels, forward and backward.

use candle_core::{CpuStorage, CustomOp1, Layout, Module, Result, Shape, Tensor, bail};
use candle_nn::VarBuilder;
use rayon::prelude::*;

/// `Linear(in, out)`: `y = x Wᵀ + b` with PyTorch's `(out, in)` weight.
///
/// Computed as `(W xᵀ)ᵀ`, so that the weight's gradient `gᵀ x` comes out contiguous in
/// the weight's own layout; candle-nn's `x · Wᵀ` produces it transposed, and summing a
/// transposed 18432×512 gradient into the accumulator runs candle's slow strided path.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Tensor,
}

impl Linear {
    /// Reads `weight` `(out, in)` and `bias` `(out)` from `vb`.
    pub fn new(in_features: usize, out_features: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self { weight: vb.get((out_features, in_features), "weight")?, bias: vb.get(out_features, "bias")? })
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.weight.matmul(&x.t()?)?.t()?.broadcast_add(&self.bias)
    }
}

/// `Conv2d(in, out, k)` with stride 1, no padding, and a bias.
#[derive(Debug, Clone)]
pub struct Conv2d {
    weight: Tensor,
    bias: Tensor,
}

impl Conv2d {
    /// Reads `weight` `(out, in, k, k)` and `bias` `(out)` from `vb`.
    pub fn new(in_channels: usize, out_channels: usize, k: usize, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get((out_channels, in_channels, k, k), "weight")?;
        let bias = vb.get(out_channels, "bias")?;
        Ok(Self { weight, bias })
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (out, c, k, _) = self.weight.dims4()?;
        let bias = self.bias.reshape((1, out, 1, 1))?;
        if !x.device().is_cpu() {
            return x.conv2d(&self.weight, 0, 1, 1, 1)?.broadcast_add(&bias);
        }
        let (b, _, h, w) = x.dims4()?;
        let (oh, ow) = (h + 1 - k, w + 1 - k);
        // (B, C·k·k, H'·W')
        let cols = x.contiguous()?.apply_op1(Im2Col { k })?;
        let weight = self.weight.reshape((out, c * k * k))?.broadcast_left(b)?;
        weight.matmul(&cols)?.reshape((b, out, oh, ow))?.broadcast_add(&bias)
    }
}

/// `ConvTranspose2d(in, out, k)` with stride 1, no padding, and a bias.
#[derive(Debug, Clone)]
pub struct ConvTranspose2d {
    weight: Tensor,
    bias: Tensor,
}

impl ConvTranspose2d {
    /// Reads `weight` `(in, out, k, k)` and `bias` `(out)` from `vb`.
    pub fn new(in_channels: usize, out_channels: usize, k: usize, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get((in_channels, out_channels, k, k), "weight")?;
        let bias = vb.get(out_channels, "bias")?;
        Ok(Self { weight, bias })
    }
}

impl Module for ConvTranspose2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (c, out, k, _) = self.weight.dims4()?;
        let bias = self.bias.reshape((1, out, 1, 1))?;
        if !x.device().is_cpu() {
            return x.conv_transpose2d(&self.weight, 0, 0, 1, 1)?.broadcast_add(&bias);
        }
        let (b, _, h, w) = x.dims4()?;
        // (out·k·k, in) · (B, in, H·W) → (B, out·k·k, H·W), scattered to (B, out, H+k−1, W+k−1)
        let weight = self.weight.reshape((c, out * k * k))?.t()?.broadcast_left(b)?;
        let cols = weight.matmul(&x.reshape((b, c, h * w))?)?;
        cols.apply_op1(Col2Im { k, in_h: h, in_w: w })?.broadcast_add(&bias)
    }
}

/// One image's im2col: `img` `(C, H, W)` → `cols` `(C·k·k, H'·W')` with
/// `cols[c·k·k + i·k + j, y·W' + x] = img[c, y + i, x + j]`, `H' = H − k + 1`,
/// `W' = W − k + 1` (stride 1, no padding).
///
/// # Panics
/// If the slices do not have those sizes.
pub fn im2col(img: &[f32], (c, h, w): (usize, usize, usize), k: usize, cols: &mut [f32]) {
    let (oh, ow) = (h + 1 - k, w + 1 - k);
    assert!(img.len() == c * h * w && cols.len() == c * k * k * oh * ow, "im2col: size mismatch");
    for (row, dst) in cols.chunks_exact_mut(oh * ow).enumerate() {
        let (ch, i, j) = (row / (k * k), row / k % k, row % k);
        for (y, dst) in dst.chunks_exact_mut(ow).enumerate() {
            let src = ch * h * w + (y + i) * w + j;
            dst.copy_from_slice(&img[src..src + ow]);
        }
    }
}

/// The adjoint of [`im2col`] for one image: adds every entry of `cols` `(C·k·k, H'·W')`
/// into the pixel of `img` `(C, H, W)` it came from.
///
/// # Panics
/// If the slices do not have those sizes.
pub fn col2im_add(cols: &[f32], (c, h, w): (usize, usize, usize), k: usize, img: &mut [f32]) {
    let (oh, ow) = (h + 1 - k, w + 1 - k);
    assert!(img.len() == c * h * w && cols.len() == c * k * k * oh * ow, "col2im: size mismatch");
    for (row, src) in cols.chunks_exact(oh * ow).enumerate() {
        let (ch, i, j) = (row / (k * k), row / k % k, row % k);
        for (y, src) in src.chunks_exact(ow).enumerate() {
            let dst = ch * h * w + (y + i) * w + j;
            for (d, s) in img[dst..dst + ow].iter_mut().zip(src) {
                *d += s;
            }
        }
    }
}

fn f32_slice<'a>(storage: &'a CpuStorage, layout: &Layout, op: &str) -> Result<&'a [f32]> {
    match (storage, layout.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((start, end))) => Ok(&v[start..end]),
        (CpuStorage::F32(_), None) => bail!("{op}: input must be contiguous"),
        _ => bail!("{op}: only f32 is supported"),
    }
}

/// `(B, C, H, W)` → `(B, C·k·k, H'·W')` with `cols[b, c·k·k + i·k + j, y·W' + x] =
/// input[b, c, y + i, x + j]`, `H' = H − k + 1`, `W' = W − k + 1`.
struct Im2Col {
    k: usize,
}

impl CustomOp1 for Im2Col {
    fn name(&self) -> &'static str {
        "im2col"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let input = f32_slice(storage, layout, self.name())?;
        let (b, c, h, w) = layout.shape().dims4()?;
        let k = self.k;
        let (oh, ow) = (h + 1 - k, w + 1 - k);
        let mut cols = vec![0f32; b * c * k * k * oh * ow];
        cols.par_chunks_mut(c * k * k * oh * ow)
            .zip(input.par_chunks(c * h * w))
            .for_each(|(cols, img)| im2col(img, (c, h, w), k, cols));
        Ok((CpuStorage::F32(cols), Shape::from((b, c * k * k, oh * ow))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (_, _, h, w) = arg.dims4()?;
        let k = self.k;
        Ok(Some(grad.contiguous()?.apply_op1(Col2Im { k, in_h: h + 1 - k, in_w: w + 1 - k })?))
    }
}

/// The adjoint of [`Im2Col`]: `(B, C·k·k, H·W)` → `(B, C, H+k−1, W+k−1)`, summing every
/// column entry into the pixel it came from.
struct Col2Im {
    k: usize,
    in_h: usize,
    in_w: usize,
}

impl CustomOp1 for Col2Im {
    fn name(&self) -> &'static str {
        "col2im"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let cols = f32_slice(storage, layout, self.name())?;
        let (b, ckk, hw) = layout.shape().dims3()?;
        let (k, h, w) = (self.k, self.in_h, self.in_w);
        if ckk % (k * k) != 0 || hw != h * w {
            bail!("col2im: columns {:?} do not fit k={k}, {h}x{w}", layout.shape());
        }
        let c = ckk / (k * k);
        let (oh, ow) = (h + k - 1, w + k - 1);
        let mut out = vec![0f32; b * c * oh * ow];
        out.par_chunks_mut(c * oh * ow)
            .zip(cols.par_chunks(ckk * hw))
            .for_each(|(img, cols)| col2im_add(cols, (c, oh, ow), k, img));
        Ok((CpuStorage::F32(out), Shape::from((b, c, oh, ow))))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op1(Im2Col { k: self.k })?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};
    use candle_nn::VarMap;

    /// Seeded values in [-1, 1) (candle's own generator cannot be seeded).
    fn random(shape: &[usize], seed: u64) -> Tensor {
        use rand::{Rng, SeedableRng, rngs::StdRng};
        let mut rng = StdRng::seed_from_u64(seed);
        let v: Vec<f32> = (0..shape.iter().product()).map(|_| rng.random_range(-1.0..1.0)).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn max_rel_diff(a: &Tensor, b: &Tensor) -> f32 {
        let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        let scale = b.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap().max(1e-6);
        diff / scale
    }

    #[test]
    fn linear_matches_candle_nn() {
        let x = Var::from_tensor(&random(&[5, 40], 1)).unwrap();
        let varmap = VarMap::new();
        {
            let mut data = varmap.data().lock().unwrap();
            data.insert("weight".into(), Var::from_tensor(&random(&[30, 40], 2)).unwrap());
            data.insert("bias".into(), Var::from_tensor(&random(&[30], 3)).unwrap());
        }
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let ours = Linear::new(40, 30, vb.clone()).unwrap().forward(&x).unwrap();
        let reference = candle_nn::linear(40, 30, vb).unwrap().forward(&x).unwrap();
        assert!(max_rel_diff(&ours, &reference) < 1e-6);
        let weight = varmap.data().lock().unwrap()["weight"].clone();
        let g_ours = ours.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let g_ref = reference.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        for t in [x.as_tensor(), weight.as_tensor()] {
            assert!(max_rel_diff(g_ours.get(t).unwrap(), g_ref.get(t).unwrap()) < 1e-5);
        }
        assert!(g_ours.get(weight.as_tensor()).unwrap().is_contiguous(), "weight gradient in the weight's layout");
    }

    /// Forward and gradients of our layer against candle's kernel, for every shape the
    /// model uses.
    #[test]
    fn matches_candle_kernels_forward_and_backward() {
        let dev = Device::Cpu;
        // (in, out, side) of conv1, conv2, deconv1, deconv2 at batch 3.
        for (transposed, cin, cout, side) in
            [(false, 1, 16, 28), (false, 16, 32, 26), (true, 32, 16, 24), (true, 16, 1, 26)]
        {
            let x = Var::from_tensor(&random(&[3, cin, side, side], 1)).unwrap();
            let wshape = if transposed { [cin, cout, 3, 3] } else { [cout, cin, 3, 3] };
            let varmap = VarMap::new();
            let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
            {
                let mut data = varmap.data().lock().unwrap();
                data.insert("weight".into(), Var::from_tensor(&random(&wshape, 2)).unwrap());
                data.insert("bias".into(), Var::from_tensor(&random(&[cout], 3)).unwrap());
            }
            let weight = varmap.data().lock().unwrap()["weight"].clone();
            let bias = varmap.data().lock().unwrap()["bias"].clone();
            let ours = if transposed {
                ConvTranspose2d::new(cin, cout, 3, vb).unwrap().forward(&x).unwrap()
            } else {
                Conv2d::new(cin, cout, 3, vb).unwrap().forward(&x).unwrap()
            };
            let reference = if transposed {
                x.conv_transpose2d(&weight, 0, 0, 1, 1).unwrap()
            } else {
                x.conv2d(&weight, 0, 1, 1, 1).unwrap()
            };
            let reference = reference.broadcast_add(&bias.reshape((1, cout, 1, 1)).unwrap()).unwrap();
            assert_eq!(ours.dims(), reference.dims());
            assert!(max_rel_diff(&ours, &reference) < 1e-5, "forward {cin}->{cout}");
            // Gradients of a random linear functional of the output.
            let probe = random(ours.dims(), 4);
            let g_ours = (ours * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            let g_ref = (reference * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            for (name, t) in [("x", x.as_tensor()), ("weight", weight.as_tensor()), ("bias", bias.as_tensor())] {
                let d = max_rel_diff(g_ours.get(t).unwrap(), g_ref.get(t).unwrap());
                assert!(d < 1e-4, "gradient of {name} for {cin}->{cout}: relative diff {d}");
            }
        }
    }
}
