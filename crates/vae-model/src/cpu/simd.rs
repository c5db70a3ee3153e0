//! The instruction sets the hand-written kernels ([`super::conv`], [`super::sparse`]) are
//! compiled for, and the vector operations they are written in.

/// The instruction set the kernels run with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Isa {
    /// AVX-512 F (16 lanes), where gemm runs its AVX-512 kernels too.
    Avx512,
    /// AVX2 with FMA (8 lanes).
    Avx2,
    /// Scalar code, on any CPU.
    Scalar,
}

impl Isa {
    /// The widest the CPU has, matching the kind of kernels gemm picks
    /// ([`crate::machine::gemm_isa`]), so that one name says which kernels a run used.
    pub(super) fn best() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if crate::machine::gemm_uses_avx512() {
                return Self::Avx512;
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                return Self::Avx2;
            }
        }
        Self::Scalar
    }

    /// Every instruction set this CPU can run, the widest first.
    #[cfg(test)]
    pub(super) fn available() -> Vec<Self> {
        let all = [Self::Avx512, Self::Avx2, Self::Scalar];
        let best = all.iter().position(|&isa| isa == Self::best()).unwrap_or(2);
        all[best..].to_vec()
    }
}

/// The vector operations the kernels are written in. Every function is `unsafe`: the
/// pointers must be valid for `LANES` values, and the CPU must have the instruction set.
pub(super) trait Simd {
    /// f32 values per vector.
    const LANES: usize;
    /// A vector of `LANES` values.
    type V: Copy;
    unsafe fn zero() -> Self::V;
    unsafe fn splat(p: *const f32) -> Self::V;
    unsafe fn load(p: *const f32) -> Self::V;
    unsafe fn store(p: *mut f32, v: Self::V);
    /// `*p += v`, lane by lane.
    unsafe fn add_store(p: *mut f32, v: Self::V);
    /// `a · b + c`.
    unsafe fn mul_add(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
}

/// One value at a time, multiply and add rounded separately.
pub(super) struct Scalar;

impl Simd for Scalar {
    const LANES: usize = 1;
    type V = f32;
    #[inline(always)]
    unsafe fn zero() -> f32 {
        0.0
    }
    #[inline(always)]
    unsafe fn splat(p: *const f32) -> f32 {
        unsafe { *p }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> f32 {
        unsafe { *p }
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: f32) {
        unsafe { *p = v }
    }
    #[inline(always)]
    unsafe fn add_store(p: *mut f32, v: f32) {
        unsafe { *p += v }
    }
    #[inline(always)]
    unsafe fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a * b + c
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) mod x86 {
    use std::arch::x86_64::*;

    /// AVX2 + FMA, 8 lanes.
    pub(in crate::cpu) struct Avx2;

    impl super::Simd for Avx2 {
        const LANES: usize = 8;
        type V = __m256;
        #[inline(always)]
        unsafe fn zero() -> __m256 {
            unsafe { _mm256_setzero_ps() }
        }
        #[inline(always)]
        unsafe fn splat(p: *const f32) -> __m256 {
            unsafe { _mm256_set1_ps(*p) }
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> __m256 {
            unsafe { _mm256_loadu_ps(p) }
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: __m256) {
            unsafe { _mm256_storeu_ps(p, v) }
        }
        #[inline(always)]
        unsafe fn add_store(p: *mut f32, v: __m256) {
            unsafe { _mm256_storeu_ps(p, _mm256_add_ps(_mm256_loadu_ps(p), v)) }
        }
        #[inline(always)]
        unsafe fn mul_add(a: __m256, b: __m256, c: __m256) -> __m256 {
            unsafe { _mm256_fmadd_ps(a, b, c) }
        }
    }

    /// The 16 × 16 matrix of 32-bit values whose rows are `r`, transposed: row `j` of the
    /// result holds element `j` of every row of `r`, in order.
    #[target_feature(enable = "avx512f")]
    pub(in crate::cpu) fn transpose_16x16(r: [__m512i; 16]) -> [__m512i; 16] {
        // 32-bit, then 64-bit interleaves within 128-bit lanes, then two 128-bit shuffles.
        let t: [__m512i; 16] = std::array::from_fn(|i| {
            let (a, b) = (r[i / 2 * 2], r[i / 2 * 2 + 1]);
            if i % 2 == 0 { _mm512_unpacklo_epi32(a, b) } else { _mm512_unpackhi_epi32(a, b) }
        });
        // u[4q + e] holds element 4L + e of rows 4q..4q+4 in each 128-bit lane L.
        let u: [__m512i; 16] = std::array::from_fn(|i| {
            let (q, e) = (i / 4, i % 4);
            let (a, b) = (t[4 * q + e / 2], t[4 * q + e / 2 + 2]);
            if e % 2 == 0 { _mm512_unpacklo_epi64(a, b) } else { _mm512_unpackhi_epi64(a, b) }
        });
        let v: [__m512i; 16] = std::array::from_fn(|i| {
            let (half, j) = (i / 8, i % 8);
            let (a, b) = (u[8 * half + j % 4], u[8 * half + j % 4 + 4]);
            if j < 4 { _mm512_shuffle_i32x4::<0x88>(a, b) } else { _mm512_shuffle_i32x4::<0xdd>(a, b) }
        });
        std::array::from_fn(|p| {
            let (e, high, odd) = (p % 4, p / 4 % 2, p / 8);
            let (a, b) = (v[4 * high + e], v[8 + 4 * high + e]);
            if odd == 0 { _mm512_shuffle_i32x4::<0x88>(a, b) } else { _mm512_shuffle_i32x4::<0xdd>(a, b) }
        })
    }

    /// AVX-512 F, 16 lanes.
    pub(in crate::cpu) struct Avx512;

    impl super::Simd for Avx512 {
        const LANES: usize = 16;
        type V = __m512;
        #[inline(always)]
        unsafe fn zero() -> __m512 {
            unsafe { _mm512_setzero_ps() }
        }
        #[inline(always)]
        unsafe fn splat(p: *const f32) -> __m512 {
            unsafe { _mm512_set1_ps(*p) }
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> __m512 {
            unsafe { _mm512_loadu_ps(p) }
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: __m512) {
            unsafe { _mm512_storeu_ps(p, v) }
        }
        #[inline(always)]
        unsafe fn add_store(p: *mut f32, v: __m512) {
            unsafe { _mm512_storeu_ps(p, _mm512_add_ps(_mm512_loadu_ps(p), v)) }
        }
        #[inline(always)]
        unsafe fn mul_add(a: __m512, b: __m512, c: __m512) -> __m512 {
            unsafe { _mm512_fmadd_ps(a, b, c) }
        }
    }
}
