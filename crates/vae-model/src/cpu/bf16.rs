//! Matrix products in bfloat16 with f32 accumulation, for [`Precision::Bf16`]: AVX-512
//! BF16's `vdpbf16ps` multiplies two pairs of bf16 values per f32 lane and adds both
//! products to it, twice the multiply-adds per instruction of an f32 FMA.
//!
//! `C (m × n) = A (m × k) · B (k × n)` with both operands rounded to bf16 (to nearest,
//! ties to even) and laid out for the kernel: A as rows of `k / 2` pairs ([`PairRows`]), B
//! as panels of [`PANEL`] columns in which each pair of B's rows is interleaved
//! ([`Panels`]). Each operand has two constructors, so that the forward product and both
//! gradient products of a layer read its weight and activations in place. Both are padded
//! with zeros to whole AMX tiles (16 rows of A, 16 pairs of the reduction), so that the
//! same packed operands feed [`super::amx`]'s kernel where the CPU has AMX, and this
//! module's `vdpbf16ps` kernel elsewhere.
//!
//! [`Precision::Bf16`]: crate::cpu::Precision::Bf16

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::{
    __m256bh, __m256i, __m512bh, __m512i, __mmask16, _mm512_cvtepu16_epi32, _mm512_cvtne2ps_pbh, _mm512_cvtneps_pbh,
    _mm512_dpbf16_ps, _mm512_loadu_ps, _mm512_loadu_si512, _mm512_mask_storeu_ps, _mm512_maskz_loadu_ps,
    _mm512_or_si512, _mm512_set1_epi32, _mm512_setzero_ps, _mm512_slli_epi32, _mm512_storeu_si512,
};

use rayon::prelude::*;

use super::SharedMut;

/// Columns of B per panel: four 16-lane registers.
pub(super) const PANEL: usize = 64;
/// Rows of A per AMX tile: A's rows are padded with zeros to a multiple of it.
pub(super) const TILE_ROWS: usize = 16;
/// Pairs of the reduction per AMX tile: both operands' pairs are padded with zeros to a
/// multiple of it.
pub(super) const TILE_PAIRS: usize = 16;
/// Rows of A per micro-tile: 6 × 4 accumulators, 4 registers of B and a broadcast of A
/// fit in the 32 vector registers.
const MR: usize = 6;
/// Pairs of the reduction per cache block: a panel's block of B is then 64 KB and a
/// thread's block of A (up to 256 rows) 256 KB, both in a Zen 4 or Xeon core's L2.
const KC_PAIRS: usize = 256;

/// `x` rounded to the nearest bf16 (ties to even), as its 16 bits; NaN stays NaN.
fn bf16_bits(x: f32) -> u32 {
    // Branch-free, so that the packing loops vectorise.
    let bits = x.to_bits();
    let rounded = bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16;
    if x.is_nan() { (bits >> 16) | 0x40 } else { rounded }
}

/// Two values as one bf16 pair, `lo` in the low half (the lower reduction index).
fn pair(lo: f32, hi: f32) -> u32 {
    bf16_bits(lo) | (bf16_bits(hi) << 16)
}

/// Lengthens `data` to at least `len` values, never shortening it: the operands of the
/// layers' products take turns in one buffer, and shrinking it made every longer one
/// zero-fill up to 19 MB before packing it (the whole bf16 pass at batch 128 109.0 / 104.2
/// against 100.9 / 101.2 ms, Intel Xeon, 2026-12-05).
fn grow(data: &mut Vec<u32>, len: usize) {
    if data.len() < len {
        data.resize(len, 0);
    }
}

/// Kept room for the two operands of one product at a time.
#[derive(Default)]
pub(super) struct Operands {
    /// The left operand.
    pub a: PairRows,
    /// The right operand.
    pub b: Panels,
}

/// The left operand: `rows` rows of `pairs` bf16 pairs along the reduction (zeros past
/// `k`), then zero rows up to a multiple of [`TILE_ROWS`].
#[derive(Default)]
pub(super) struct PairRows {
    data: Vec<u32>,
    rows: usize,
    pairs: usize,
}

impl PairRows {
    /// `A = x`, `x` row-major `rows × k`.
    pub fn set_rows(&mut self, x: &[f32], rows: usize, k: usize) {
        self.reshape(rows, k);
        let pairs = self.pairs;
        self.data[..rows * pairs].par_chunks_mut(pairs).zip(x.par_chunks(k)).for_each(|(dst, row)| {
            let (whole, rest) = row.split_at(k / 2 * 2);
            let (dst, padding) = dst.split_at_mut(k.div_ceil(2));
            for (d, v) in dst.iter_mut().zip(whole.chunks_exact(2)) {
                *d = pair(v[0], v[1]);
            }
            if let (Some(d), [last]) = (dst.last_mut(), rest) {
                *d = pair(*last, 0.0);
            }
            padding.fill(0);
        });
    }

    /// `A = gᵀ`, `g` row-major `k × rows`.
    pub fn set_transposed(&mut self, g: &[f32], k: usize, rows: usize) {
        self.reshape(rows, k);
        let (pairs, filled) = (self.pairs, k.div_ceil(2));
        // 64 rows of A at a time: reads of 64 contiguous values, writes within 64 · pairs.
        self.data[..rows * pairs].par_chunks_mut(64 * pairs).enumerate().for_each(|(block, dst)| {
            let r0 = block * 64;
            let n = dst.len() / pairs;
            for row in dst.chunks_exact_mut(pairs) {
                row[filled..].fill(0);
            }
            for p in 0..filled {
                let lo = &g[2 * p * rows + r0..][..n];
                let hi = (2 * p + 1 < k).then(|| &g[(2 * p + 1) * rows + r0..][..n]);
                for (r, lo) in lo.iter().enumerate() {
                    dst[r * pairs + p] = pair(*lo, hi.map_or(0.0, |hi| hi[r]));
                }
            }
        });
    }

    /// Sizes the operand for `rows × k`, zeroing its padding rows; the packers write every
    /// pair of the rows themselves.
    fn reshape(&mut self, rows: usize, k: usize) {
        (self.rows, self.pairs) = (rows, k.div_ceil(2).next_multiple_of(TILE_PAIRS));
        let len = rows.next_multiple_of(TILE_ROWS) * self.pairs;
        grow(&mut self.data, len);
        self.data[rows * self.pairs..len].fill(0);
    }

    /// Its rows (without the padding).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Pairs per row, padding included.
    pub fn pairs(&self) -> usize {
        self.pairs
    }

    /// The packed pairs, row after row, padding rows included.
    pub fn data(&self) -> &[u32] {
        &self.data[..self.rows.next_multiple_of(TILE_ROWS) * self.pairs]
    }
}

/// The right operand, `k × n`: panels of [`PANEL`] columns (the last padded with zeros),
/// each `pairs × PANEL` pairs, pair `p` of column `c` holding rows `2p` and `2p + 1`
/// (zeros past `k`).
#[derive(Default)]
pub(super) struct Panels {
    data: Vec<u32>,
    pairs: usize,
    cols: usize,
}

impl Panels {
    /// `B = wᵀ`, `w` row-major `n × k` (a linear layer's weight in its forward product).
    pub fn set_transposed(&mut self, w: &[f32], n: usize, k: usize) {
        self.reshape(k, n);
        let pairs = self.pairs;
        // Blocks of 16 columns × 16 pairs: 16 rows of `w` read, one 16 × 16 transpose.
        let len = self.len();
        self.data[..len].par_chunks_mut(pairs * PANEL).enumerate().for_each(|(panel, dst)| {
            for block in (0..pairs).step_by(16) {
                for group in (0..PANEL).step_by(16) {
                    let c = panel * PANEL + group;
                    #[cfg(target_arch = "x86_64")]
                    if c + 16 <= n && 2 * block + 32 <= k {
                        // SAFETY: the CPU has AVX-512 F and BF16 (only bf16 products pack
                        // operands); rows `c..c + 16` of `w` hold values `2 · block..+ 32`,
                        // and `dst` pairs `block..+16` of lanes `group..+16`.
                        unsafe { transpose_16x16(&w[c * k + 2 * block..], k, &mut dst[block * PANEL + group..]) };
                        continue;
                    }
                    for lane in group..group + 16 {
                        let c = panel * PANEL + lane;
                        let at = |i: usize| if c < n && i < k { w[c * k + i] } else { 0.0 };
                        for p in block..(block + 16).min(pairs) {
                            dst[p * PANEL + lane] = pair(at(2 * p), at(2 * p + 1));
                        }
                    }
                }
            }
        });
    }

    /// `B = b`, `b` row-major `k × n` (a weight in its input-gradient product, or the
    /// activations in a weight gradient).
    pub fn set_rows(&mut self, b: &[f32], k: usize, n: usize) {
        self.reshape(k, n);
        let (pairs, panels) = (self.pairs, n.div_ceil(PANEL));
        // Each thread takes a run of pairs, reading the two rows of each whole.
        let chunk = pairs.div_ceil(rayon::current_num_threads().max(1) * 4).max(1);
        let dst = SharedMut(self.data.as_mut_ptr());
        let vector = crate::machine::has_avx512_bf16();
        (0..pairs).into_par_iter().with_min_len(chunk).for_each(|p| {
            let row = |i: usize| if i < k { &b[i * n..(i + 1) * n] } else { &[] };
            let (lo, hi) = (row(2 * p), row(2 * p + 1));
            for panel in 0..panels {
                // SAFETY: pair `p` of each panel is written by this iteration alone, and
                // lies inside the `panels · pairs · PANEL` values `reshape` sized.
                let out = unsafe { std::slice::from_raw_parts_mut(dst.at((panel * pairs + p) * PANEL), PANEL) };
                let c0 = panel * PANEL;
                if c0 + PANEL <= n && !hi.is_empty() {
                    let (lo, hi) = (&lo[c0..c0 + PANEL], &hi[c0..c0 + PANEL]);
                    #[cfg(target_arch = "x86_64")]
                    if vector {
                        // SAFETY: the CPU has AVX-512 F and BF16, checked above.
                        unsafe { interleave_panel_row(lo, hi, out) };
                        continue;
                    }
                    for ((d, lo), hi) in out.iter_mut().zip(lo).zip(hi) {
                        *d = pair(*lo, *hi);
                    }
                } else {
                    for (lane, d) in out.iter_mut().enumerate() {
                        let at = |r: &[f32]| r.get(c0 + lane).copied().unwrap_or(0.0);
                        *d = pair(at(lo), at(hi));
                    }
                }
            }
        });
    }

    /// Sizes the operand for `k × n`; the packers write every pair of every panel,
    /// padding included.
    fn reshape(&mut self, k: usize, n: usize) {
        (self.pairs, self.cols) = (k.div_ceil(2).next_multiple_of(TILE_PAIRS), n);
        let len = self.len();
        grow(&mut self.data, len);
    }

    /// Values of the panels, padding included.
    fn len(&self) -> usize {
        self.cols.div_ceil(PANEL) * self.pairs * PANEL
    }

    /// Its columns (without the padding).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Pairs per column, padding included.
    pub fn pairs(&self) -> usize {
        self.pairs
    }

    /// The packed pairs, panel after panel.
    pub fn data(&self) -> &[u32] {
        &self.data[..self.len()]
    }
}

/// One pair of a panel: `out[c] = pair(lo[c], hi[c])` for the [`PANEL`] columns, with the
/// CPU's conversion (to nearest, ties to even, as [`pair`]; it also flushes subnormal
/// values to zero, which [`pair`] keeps); four times faster than the scalar loop, which
/// the baseline x86-64 build runs four lanes wide.
///
/// # Safety
/// The CPU has AVX-512 F and BF16.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn interleave_panel_row(lo: &[f32], hi: &[f32], out: &mut [u32]) {
    assert!(lo.len() == PANEL && hi.len() == PANEL && out.len() == PANEL);
    for j in (0..PANEL).step_by(16) {
        // SAFETY: 16 values at `j` in each slice, by the assertion; the transmutes
        // reinterpret 256 bits.
        unsafe {
            let lo = _mm512_cvtneps_pbh(_mm512_loadu_ps(lo.as_ptr().add(j)));
            let hi = _mm512_cvtneps_pbh(_mm512_loadu_ps(hi.as_ptr().add(j)));
            let lo = _mm512_cvtepu16_epi32(std::mem::transmute::<__m256bh, __m256i>(lo));
            let hi = _mm512_cvtepu16_epi32(std::mem::transmute::<__m256bh, __m256i>(hi));
            _mm512_storeu_si512(out.as_mut_ptr().add(j).cast(), _mm512_or_si512(lo, _mm512_slli_epi32::<16>(hi)));
        }
    }
}

/// Sixteen rows of `w` (stride `k`), 32 values each, as bf16 pairs, transposed into
/// `dst`: pair `p` of row `r` to `dst[p · PANEL + r]`.
///
/// # Safety
/// The CPU has AVX-512 F and BF16; `w` holds `15 · k + 32` values and `dst`
/// `15 · PANEL + 16`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn transpose_16x16(w: &[f32], k: usize, dst: &mut [u32]) {
    assert!(w.len() >= 15 * k + 32 && dst.len() >= 15 * PANEL + 16);
    // SAFETY: inside `w` by the assertion; a plain reinterpretation of 512 bits.
    let r: [__m512i; 16] = std::array::from_fn(|i| unsafe {
        let row = w.as_ptr().add(i * k);
        std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(
            _mm512_loadu_ps(row.add(16)),
            _mm512_loadu_ps(row),
        ))
    });
    for (p, column) in super::simd::x86::transpose_16x16(r).into_iter().enumerate() {
        // SAFETY: 16 values at `p · PANEL`, inside `dst` by the assertion.
        unsafe { _mm512_storeu_si512(dst.as_mut_ptr().add(p * PANEL).cast(), column) };
    }
}

/// The kernels that compute bf16 products.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kernel {
    /// AMX tiles ([`super::amx`]).
    Amx,
    /// AVX-512 BF16's `vdpbf16ps` (this module's).
    Avx512,
}

impl Kernel {
    /// The fastest this CPU and OS allow: AMX where the process may use its tiles,
    /// otherwise AVX-512 BF16 (`None` without either).
    pub fn best() -> Option<Self> {
        if crate::machine::amx_bf16_granted() {
            Some(Self::Amx)
        } else {
            crate::machine::has_avx512_bf16().then_some(Self::Avx512)
        }
    }
}

/// `c (m × n, row-major) = a · b`, or `+= a · b` when `accumulate`, on the best kernel
/// ([`Kernel::best`]); panics where there is none (callers check
/// [`crate::machine::has_avx512_bf16`] first).
pub(super) fn matmul(c: &mut [f32], a: &PairRows, b: &Panels, accumulate: bool) {
    matmul_on(Kernel::best().unwrap_or(Kernel::Avx512), c, a, b, accumulate);
}

/// [`matmul`] on the given kernel.
fn matmul_on(kernel: Kernel, c: &mut [f32], a: &PairRows, b: &Panels, accumulate: bool) {
    match kernel {
        Kernel::Amx => super::amx::matmul(c, a, b, accumulate),
        Kernel::Avx512 => matmul_avx512(c, a, b, accumulate),
    }
}

/// [`matmul`] on AVX-512 BF16: the rows of `c` are split between the cores.
fn matmul_avx512(c: &mut [f32], a: &PairRows, b: &Panels, accumulate: bool) {
    let (m, n) = (a.rows, b.cols);
    assert!(a.pairs == b.pairs && c.len() == m * n, "bf16 matmul: shapes do not match");
    assert!(crate::machine::has_avx512_bf16(), "bf16 matmul without AVX-512 BF16");
    if m == 0 || n == 0 {
        return;
    }
    let rows_per_thread = m.div_ceil(rayon::current_num_threads().max(1)).div_ceil(MR) * MR;
    c.par_chunks_mut(rows_per_thread * n).enumerate().for_each(|(t, c)| {
        let first = t * rows_per_thread;
        let a_rows = &a.data[first * a.pairs..(first + c.len() / n) * a.pairs];
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX-512 F and BF16 were checked above; `block` reads and writes only
        // inside the slices it is given (see there).
        unsafe {
            block(c, n, a_rows, a.pairs, b, accumulate)
        }
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!("bf16 products are x86-64 only: {}", a_rows.len() + accumulate as usize)
    });
}

/// [`matmul`] on a run of rows: `a` holds them (`pairs` each), `c` their outputs.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
fn block(c: &mut [f32], n: usize, a: &[u32], pairs: usize, b: &Panels, accumulate: bool) {
    let rows = c.len() / n;
    for k0 in (0..pairs).step_by(KC_PAIRS) {
        let kc = KC_PAIRS.min(pairs - k0);
        let load = accumulate || k0 > 0;
        for panel in 0..n.div_ceil(PANEL) {
            let b_block = &b.data[(panel * pairs + k0) * PANEL..][..kc * PANEL];
            let valid = (n - panel * PANEL).min(PANEL);
            let masks: [__mmask16; 4] = std::array::from_fn(|j| {
                let lanes = valid.saturating_sub(16 * j).min(16);
                ((1u32 << lanes) - 1) as __mmask16
            });
            for r0 in (0..rows).step_by(MR) {
                let tile = Tile { a: &a[r0 * pairs + k0..], a_stride: pairs, b: b_block, pairs: kc };
                let out = &mut c[r0 * n + panel * PANEL..];
                // SAFETY: the target features are this function's; `micro_tile`'s bounds
                // hold: `rows - r0` rows of `a` and `out` remain, with strides `pairs`
                // and `n`, and the masks stop at `valid` columns of each output row.
                unsafe {
                    match rows - r0 {
                        1 => micro_tile::<1>(tile, out, n, masks, load),
                        2 => micro_tile::<2>(tile, out, n, masks, load),
                        3 => micro_tile::<3>(tile, out, n, masks, load),
                        4 => micro_tile::<4>(tile, out, n, masks, load),
                        5 => micro_tile::<5>(tile, out, n, masks, load),
                        _ => micro_tile::<MR>(tile, out, n, masks, load),
                    }
                }
            }
        }
    }
}

/// The operands of one micro-tile: rows of A from `a` (stride `a_stride` pairs), a
/// panel's block of B, `pairs` deep.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct Tile<'a> {
    a: &'a [u32],
    a_stride: usize,
    b: &'a [u32],
    pairs: usize,
}

/// `R` rows × 64 columns of the output: `out[r * stride + col] (+)= Σ_p a[r, p] · b[p, col]`
/// for the columns whose mask bit is set, loading the old values first when `load`.
///
/// # Safety
/// The CPU has AVX-512 F and BF16; `t.a` holds `(R − 1) · t.a_stride + t.pairs` values,
/// `t.b` `t.pairs · 64`, and `out` has the masked columns of `R` rows of stride `stride`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn micro_tile<const R: usize>(t: Tile, out: &mut [f32], stride: usize, masks: [__mmask16; 4], load: bool) {
    debug_assert!(t.a.len() >= (R - 1) * t.a_stride + t.pairs && t.b.len() >= t.pairs * PANEL);
    let out = out.as_mut_ptr();
    let mut acc = [[_mm512_setzero_ps(); 4]; R];
    if load {
        for (r, acc) in acc.iter_mut().enumerate() {
            for (j, acc) in acc.iter_mut().enumerate() {
                // SAFETY: masked lanes only, inside row `r` of `out` (the caller's bounds).
                *acc = unsafe { _mm512_maskz_loadu_ps(masks[j], out.add(r * stride + 16 * j)) };
            }
        }
    }
    let (a, b) = (t.a.as_ptr(), t.b.as_ptr());
    for p in 0..t.pairs {
        // SAFETY: pair `p < t.pairs` of the block, 64 values, inside `t.b`.
        let bv: [__m512bh; 4] = std::array::from_fn(|j| unsafe {
            std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(b.add(p * PANEL + 16 * j).cast()))
        });
        for (r, acc) in acc.iter_mut().enumerate() {
            // SAFETY: row `r < R`, pair `p < t.pairs`: inside `t.a`.
            let av = unsafe { *a.add(r * t.a_stride + p) };
            // SAFETY: a plain reinterpretation of 16 lanes of 32 bits.
            let av = unsafe { std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(av as i32)) };
            for (acc, bv) in acc.iter_mut().zip(bv) {
                *acc = _mm512_dpbf16_ps(*acc, av, bv);
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        for (j, acc) in acc.iter().enumerate() {
            // SAFETY: masked lanes only, as above.
            unsafe { _mm512_mask_storeu_ps(out.add(r * stride + 16 * j), masks[j], *acc) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use rand::{Rng, SeedableRng, rngs::StdRng};

    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..n).map(|_| rng.random_range(-1.0..1.0)).collect()
    }

    /// Rounding to bf16 is to nearest, ties to even, as the CPU's conversion.
    #[test]
    fn rounds_to_nearest_even() {
        assert_eq!(bf16_bits(1.0), 0x3f80);
        assert_eq!(bf16_bits(f32::from_bits(0x3f80_8000)), 0x3f80); // a tie, to even
        assert_eq!(bf16_bits(f32::from_bits(0x3f81_8000)), 0x3f82); // a tie, to even
        assert_eq!(bf16_bits(f32::from_bits(0x3f80_8001)), 0x3f81);
        assert!(f32::from_bits(bf16_bits(f32::NAN) << 16).is_nan());
    }

    /// Every layout and edge (odd `k`, partial panels and tiles, accumulation, several
    /// cache blocks) gives the product of the bf16-rounded operands, within the bound of
    /// f32 summation round-off (`k · ε · Σ |a·b|`).
    #[test]
    fn products_match_the_rounded_operands() {
        if !crate::machine::has_avx512_bf16() {
            eprintln!("skipped: this CPU has no AVX-512 BF16");
            return;
        }
        let round = |v: &[f32]| v.iter().map(|&x| f32::from_bits(bf16_bits(x) << 16)).collect::<Vec<_>>();
        let kernels = [Kernel::Amx, Kernel::Avx512]
            .into_iter()
            .filter(|&k| k != Kernel::Amx || crate::machine::amx_bf16_granted());
        for (kernel, (m, k, n)) in kernels.flat_map(|kernel| {
            [(7, 5, 3), (13, 600, 130), (32, 1100, 64), (70, 33, 70), (1, 2, 1), (50, 40, 200), (200, 40, 70)]
                .map(|s| (kernel, s))
        }) {
            let (x, w, g) = (values(m * k, 1), values(n * k, 2), values(k * m, 3));
            let (xr, wr, gr) = (round(&x), round(&w), round(&g));
            let start = values(m * n, 4);
            let (mut a, mut b) = (PairRows::default(), Panels::default());
            for layout in 0..4 {
                // A = x or gᵀ; B = wᵀ or w read as k × n.
                let a_at = |i: usize, p: usize| if layout % 2 == 0 { xr[i * k + p] } else { gr[p * m + i] };
                let b_at = |p: usize, j: usize| if layout < 2 { wr[j * k + p] } else { wr[p * n + j] };
                if layout % 2 == 0 {
                    a.set_rows(&x, m, k)
                } else {
                    a.set_transposed(&g, k, m)
                }
                if layout < 2 {
                    b.set_transposed(&w, n, k)
                } else {
                    b.set_rows(&w, k, n)
                }
                let mut c = start.clone();
                matmul_on(kernel, &mut c, &a, &b, layout == 3);
                for i in 0..m {
                    for j in 0..n {
                        let terms = (0..k).map(|p| f64::from(a_at(i, p)) * f64::from(b_at(p, j)));
                        let (exact, size) = terms.fold((0.0, 0.0), |(s, a), t| (s + t, a + t.abs()));
                        let exact = exact + if layout == 3 { f64::from(start[i * n + j]) } else { 0.0 };
                        let (got, bound) =
                            (f64::from(c[i * n + j]), (k + 1) as f64 * f64::from(f32::EPSILON) * (size + 1.0));
                        assert!(
                            (got - exact).abs() <= bound,
                            "{kernel:?} {m}x{k}x{n} layout {layout} ({i}, {j}): {got} vs {exact}"
                        );
                    }
                }
            }
        }
    }
}
