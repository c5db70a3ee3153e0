//! bf16 products on AMX tiles (Intel Sapphire Rapids and later): `tdpbf16ps` multiplies
//! a 16 × 32 bf16 tile by a 32 × 16 one into a 16 × 16 f32 tile, 8,192 multiply-adds per
//! instruction, about eight times the rate of AVX-512 BF16's `vdpbf16ps` on such a core.
//!
//! The operands are [`bf16`](super::bf16)'s packed layouts as they are: a tile of A is 16
//! rows of 16 pairs of a [`PairRows`] (stride: its pairs), a tile of B 16 pairs of 16
//! columns of a [`Panels`] panel (stride: the panel's width), which is the pair-interleaved
//! layout AMX reads. Both are padded with zeros to whole tiles (16 rows, 16 pairs, 64
//! columns), so that every tile load stays inside them. The tile instructions have no
//! stable intrinsics in Rust; they are written as inline assembly, which is.
//!
//! Linux hands a process the 8 KB of tile state only on request (`arch_prctl`
//! `ARCH_REQ_XCOMP_PERM`); [`crate::machine::amx_bf16_granted`] makes it once and says
//! whether it was granted.

#[cfg(target_arch = "x86_64")]
use std::arch::asm;

use rayon::prelude::*;

use super::bf16::{PANEL, PairRows, Panels, TILE_PAIRS, TILE_ROWS};

/// Pairs of the reduction per cache block: a 32-column slice of B is then 32 KB, and a
/// thread's 128 rows of A 128 KB, both in a core's L2.
const KC_PAIRS: usize = 256;

/// `c (m × n, row-major) = a · b`, or `+= a · b` when `accumulate`, on AMX tiles; the
/// output's rows are split between the cores, or its panels where there are few rows.
/// Needs [`crate::machine::amx_bf16_granted`].
pub(super) fn matmul(c: &mut [f32], a: &PairRows, b: &Panels, accumulate: bool) {
    let (m, n) = (a.rows(), b.cols());
    assert!(crate::machine::amx_bf16_granted(), "AMX product without AMX");
    assert!(a.pairs() == b.pairs() && c.len() == m * n, "AMX matmul: shapes do not match");
    if m == 0 || n == 0 {
        return;
    }
    let threads = rayon::current_num_threads().max(1);
    let (row_tiles, panels) = (m.div_ceil(TILE_ROWS), n.div_ceil(PANEL));
    let out = Output { c: c.as_mut_ptr(), m, n };
    // Each task owns a block of whole row tiles × whole panels of the output.
    let (row_step, panel_step) = if row_tiles >= 4 * threads {
        (row_tiles.div_ceil(threads), panels)
    } else {
        (row_tiles, panels.div_ceil(threads))
    };
    let blocks: Vec<(usize, usize)> =
        (0..row_tiles).step_by(row_step).flat_map(|r| (0..panels).step_by(panel_step).map(move |p| (r, p))).collect();
    blocks.into_par_iter().for_each(|(r, p)| {
        let rows = r * TILE_ROWS..((r + row_step) * TILE_ROWS).min(m);
        let panels = p..(p + panel_step).min(panels);
        // SAFETY: AMX was checked above; the block's rows and panels lie inside `a`,
        // `b` and the output (see `Output`), and no other task writes its part of `c`.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            block(out, a, b, (rows, panels), accumulate)
        }
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!("AMX is x86-64 only: {rows:?} {panels:?} {accumulate}")
    });
}

/// The output of a product, shared by the tasks that write disjoint blocks of it.
#[derive(Clone, Copy)]
struct Output {
    c: *mut f32,
    m: usize,
    n: usize,
}

// SAFETY: the tasks of one product write disjoint blocks, and the slice outlives them.
unsafe impl Send for Output {}
// SAFETY: as above.
unsafe impl Sync for Output {}

/// The tile configuration: palette 1, eight tiles of 16 rows × 64 bytes (0–3 the output,
/// 4–5 A, 6–7 B).
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    bytes_per_row: [u16; 16],
    rows: [u8; 16],
}

const CONFIG: TileConfig = TileConfig {
    palette: 1,
    start_row: 0,
    reserved: [0; 14],
    bytes_per_row: [64, 64, 64, 64, 64, 64, 64, 64, 0, 0, 0, 0, 0, 0, 0, 0],
    rows: [16, 16, 16, 16, 16, 16, 16, 16, 0, 0, 0, 0, 0, 0, 0, 0],
};

/// Bytes between two rows of a 16 × 16 f32 tile kept in memory.
const TILE_BYTES_PER_ROW: usize = 16 * 4;

/// One task's block of the product: `rows` of the output (starting at a whole tile) ×
/// the columns of `panels`, over the whole reduction in [`KC_PAIRS`] blocks.
///
/// # Safety
/// AMX is granted; `rows.start` is a multiple of 16; `rows` and `panels` lie inside
/// the product; no other thread writes this block of `out`.
#[cfg(target_arch = "x86_64")]
unsafe fn block(
    out: Output,
    a: &PairRows,
    b: &Panels,
    (rows, panels): (std::ops::Range<usize>, std::ops::Range<usize>),
    accumulate: bool,
) {
    // SAFETY: AMX is available (the caller's contract); the configuration is valid.
    unsafe { asm!("ldtilecfg [{}]", in(reg) &CONFIG, options(nostack, readonly)) };
    let pairs = a.pairs();
    let mut edge = Edge { scratch: Scratch([0.0; 4 * 256]), out };
    for k0 in (0..pairs).step_by(KC_PAIRS) {
        let kc = KC_PAIRS.min(pairs - k0);
        let load = accumulate || k0 > 0;
        for panel in panels.clone() {
            for half in 0..2 {
                let col = panel * PANEL + half * 32;
                if col >= out.n {
                    continue;
                }
                // B's two tiles: 16-column halves of this 32-column slice of the panel.
                let b_ptr = b.data()[(panel * pairs + k0) * PANEL + half * 32..].as_ptr();
                for r0 in rows.clone().step_by(2 * TILE_ROWS) {
                    let two = r0 + TILE_ROWS < rows.end;
                    let a_ptr = a.data()[r0 * pairs + k0..].as_ptr();
                    // SAFETY: the tiles read lie inside the padded operands: rows r0..+32
                    // (or +16) of A and pairs k0..k0 + kc, a multiple of 16; the output
                    // tiles go through `edge`, which bounds them by m and n.
                    unsafe {
                        edge.load(r0, col, two, load);
                        if two {
                            tile_steps::<2>(a_ptr, pairs * 4, b_ptr, kc);
                        } else {
                            tile_steps::<1>(a_ptr, pairs * 4, b_ptr, kc);
                        }
                        edge.store(r0, col, two);
                    }
                }
            }
        }
    }
    // SAFETY: returns the tile state to its initial, unused one.
    unsafe { asm!("tilerelease", options(nostack, nomem)) };
}

/// `kc` pairs (a multiple of 16) of the product into output tiles 0–1 (and 2–3 with
/// `A_TILES = 2`): A's tiles at `a` (rows `stride` bytes apart; the second 16 rows
/// below), B's at `b` (two 16-column tiles side by side in a 64-column panel).
///
/// # Safety
/// AMX is configured as [`CONFIG`]; A holds `16 · A_TILES` rows of `kc` pairs from `a`,
/// B `kc` rows of 32 columns from `b`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn tile_steps<const A_TILES: usize>(a: *const u32, stride: usize, b: *const u32, kc: usize) {
    for p in (0..kc).step_by(TILE_PAIRS) {
        let (a, b) = (a.wrapping_add(p), b.wrapping_add(p * PANEL));
        // SAFETY: the caller's bounds; tiles 4–7 hold operands only.
        unsafe {
            if A_TILES == 2 {
                asm!(
                    "tileloadd tmm4, [{a} + {sa}*1]",
                    "tileloadd tmm6, [{b} + {sb}*1]",
                    "tileloadd tmm7, [{b} + {sb}*1 + 64]",
                    "tdpbf16ps tmm0, tmm4, tmm6",
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    "tileloadd tmm5, [{a2} + {sa}*1]",
                    "tdpbf16ps tmm2, tmm5, tmm6",
                    "tdpbf16ps tmm3, tmm5, tmm7",
                    a = in(reg) a,
                    a2 = in(reg) a.wrapping_byte_add(16 * stride),
                    sa = in(reg) stride,
                    b = in(reg) b,
                    sb = in(reg) PANEL * 4,
                    options(nostack, readonly),
                );
            } else {
                asm!(
                    "tileloadd tmm4, [{a} + {sa}*1]",
                    "tileloadd tmm6, [{b} + {sb}*1]",
                    "tileloadd tmm7, [{b} + {sb}*1 + 64]",
                    "tdpbf16ps tmm0, tmm4, tmm6",
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    a = in(reg) a,
                    sa = in(reg) stride,
                    b = in(reg) b,
                    sb = in(reg) PANEL * 4,
                    options(nostack, readonly),
                );
            }
        }
    }
}

/// Four 16 × 16 f32 tiles, 64-byte aligned.
#[repr(C, align(64))]
struct Scratch([f32; 4 * 256]);

/// Moves output tiles 0–3 between the tile registers and the output: directly where a
/// tile lies inside it, through [`Scratch`] where it crosses its last row or column.
struct Edge {
    scratch: Scratch,
    out: Output,
}

impl Edge {
    /// Output tile `t` (0, 1: rows `r0..+16`, columns `col..+16`, `+16..+32`; 2, 3: the
    /// next 16 rows) as `(first row, first column, whole)`.
    fn tile(&self, t: usize, r0: usize, col: usize) -> (usize, usize, bool) {
        let (r, c) = (r0 + (t / 2) * 16, col + (t % 2) * 16);
        (r, c, r + 16 <= self.out.m && c + 16 <= self.out.n)
    }

    /// Tiles 0–1 (and 2–3 if `two`) zeroed, or loaded from the output when `load`.
    ///
    /// # Safety
    /// AMX is configured as [`CONFIG`]; `r0` and `col` are inside the output.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load(&mut self, r0: usize, col: usize, two: bool, load: bool) {
        for t in 0..if two { 4 } else { 2 } {
            let (r, c, whole) = self.tile(t, r0, col);
            let (ptr, stride) = if !load {
                (std::ptr::null(), 0)
            } else if whole {
                (self.out.c.wrapping_add(r * self.out.n + c).cast_const(), self.out.n * 4)
            } else {
                let s = &mut self.scratch.0[t * 256..][..256];
                s.fill(0.0);
                for i in 0..16.min(self.out.m.saturating_sub(r)) {
                    for j in 0..16.min(self.out.n.saturating_sub(c)) {
                        // SAFETY: row r + i < m, column c + j < n.
                        s[i * 16 + j] = unsafe { *self.out.c.add((r + i) * self.out.n + c + j) };
                    }
                }
                (s.as_ptr(), TILE_BYTES_PER_ROW)
            };
            // SAFETY: a whole tile of the output or of the scratch; zeroing reads nothing.
            unsafe {
                match (t, load) {
                    (0, false) => asm!("tilezero tmm0", options(nostack, nomem)),
                    (1, false) => asm!("tilezero tmm1", options(nostack, nomem)),
                    (2, false) => asm!("tilezero tmm2", options(nostack, nomem)),
                    (3, false) => asm!("tilezero tmm3", options(nostack, nomem)),
                    (0, true) => {
                        asm!("tileloadd tmm0, [{} + {}*1]", in(reg) ptr, in(reg) stride, options(nostack, readonly))
                    }
                    (1, true) => {
                        asm!("tileloadd tmm1, [{} + {}*1]", in(reg) ptr, in(reg) stride, options(nostack, readonly))
                    }
                    (2, true) => {
                        asm!("tileloadd tmm2, [{} + {}*1]", in(reg) ptr, in(reg) stride, options(nostack, readonly))
                    }
                    _ => asm!("tileloadd tmm3, [{} + {}*1]", in(reg) ptr, in(reg) stride, options(nostack, readonly)),
                }
            }
        }
    }

    /// Tiles 0–1 (and 2–3 if `two`) written to the output.
    ///
    /// # Safety
    /// As [`Edge::load`]; no other thread writes these tiles of the output.
    #[cfg(target_arch = "x86_64")]
    unsafe fn store(&mut self, r0: usize, col: usize, two: bool) {
        for t in 0..if two { 4 } else { 2 } {
            let (r, c, whole) = self.tile(t, r0, col);
            let (ptr, stride) = if whole {
                (self.out.c.wrapping_add(r * self.out.n + c), self.out.n * 4)
            } else {
                (self.scratch.0[t * 256..].as_mut_ptr(), TILE_BYTES_PER_ROW)
            };
            // SAFETY: a whole tile of the output or of the scratch.
            unsafe {
                match t {
                    0 => asm!("tilestored [{} + {}*1], tmm0", in(reg) ptr, in(reg) stride, options(nostack)),
                    1 => asm!("tilestored [{} + {}*1], tmm1", in(reg) ptr, in(reg) stride, options(nostack)),
                    2 => asm!("tilestored [{} + {}*1], tmm2", in(reg) ptr, in(reg) stride, options(nostack)),
                    _ => asm!("tilestored [{} + {}*1], tmm3", in(reg) ptr, in(reg) stride, options(nostack)),
                }
            }
            if !whole {
                let s = &self.scratch.0[t * 256..][..256];
                for i in 0..16.min(self.out.m.saturating_sub(r)) {
                    for j in 0..16.min(self.out.n.saturating_sub(c)) {
                        // SAFETY: row r + i < m, column c + j < n.
                        unsafe { *self.out.c.add((r + i) * self.out.n + c + j) = s[i * 16 + j] };
                    }
                }
            }
        }
    }
}
