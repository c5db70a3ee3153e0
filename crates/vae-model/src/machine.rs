//! What the CPU is and which matrix kernels run on it, so that runs and benchmarks say
//! which machine their seconds and their bits came from (the same seed gives the same
//! bytes only with the same kernels).

/// The CPU's model name from its CPUID brand string, e.g. `AMD EPYC 7B13` (`unknown`
/// off x86-64 or where the CPU does not report one).
pub fn cpu_model() -> String {
    #[cfg(target_arch = "x86_64")]
    // `__cpuid` became a safe function after this crate's minimum Rust version.
    #[allow(unused_unsafe)]
    {
        use std::arch::x86_64::__cpuid;
        // SAFETY: CPUID exists on every x86-64 CPU; leaf 0x8000_0000 says which extended
        // leaves exist, and only those are read.
        let highest = unsafe { __cpuid(0x8000_0000) }.eax;
        if highest >= 0x8000_0004 {
            let mut bytes = Vec::with_capacity(48);
            for leaf in 0x8000_0002u32..=0x8000_0004 {
                // SAFETY: as above, the leaf exists.
                let r = unsafe { __cpuid(leaf) };
                for word in [r.eax, r.ebx, r.ecx, r.edx] {
                    bytes.extend_from_slice(&word.to_le_bytes());
                }
            }
            let name =
                String::from_utf8_lossy(&bytes).trim_matches(|c: char| c == '\0' || c.is_whitespace()).to_string();
            if !name.is_empty() {
                return name;
            }
        }
    }
    "unknown".to_string()
}

/// The widest vector instruction set the `gemm` crate (candle's and the CPU step's matrix
/// products) dispatches to on this CPU at run time, and the CPU step's direct
/// convolutions with it: `AVX-512` (its x86-v4 kernels, needing AVX-512 F/BW/CD/DQ/VL),
/// `AVX2+FMA` (x86-v3), or `baseline` (scalar convolutions).
pub fn gemm_isa() -> &'static str {
    if gemm_uses_avx512() {
        return "AVX-512";
    }
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        return "AVX2+FMA";
    }
    "baseline"
}

/// Whether the `gemm` crate runs its AVX-512 (x86-v4) kernels on this CPU; some layouts
/// of the CPU step's products are chosen by it (measured faster with one kind of
/// kernel, slower with the other).
pub fn gemm_uses_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512cd")
            && is_x86_feature_detected!("avx512dq")
            && is_x86_feature_detected!("avx512vl")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Whether the CPU has AVX-512 F and BF16 (`vdpbf16ps`), which
/// [`Precision::Bf16`](crate::cpu::Precision::Bf16) needs: AMD Zen 4 and later, Intel
/// Cooper Lake, Sapphire Rapids and later.
pub fn has_avx512_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Whether this process may compute bf16 products on AMX tiles: the CPU has AMX-TILE and
/// AMX-BF16 (Intel Sapphire Rapids and later) and Linux granted the request for the tile
/// state (`arch_prctl(ARCH_REQ_XCOMP_PERM)`, made once, on the first call; kernels before
/// 5.16 and some hypervisors refuse it).
pub fn amx_bf16_granted() -> bool {
    static GRANTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *GRANTED.get_or_init(request_tile_state)
}

/// CPUID's AMX-TILE and AMX-BF16 bits, then the request for the tile state.
fn request_tile_state() -> bool {
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    #[allow(unused_unsafe)]
    {
        use std::arch::x86_64::{__cpuid, __cpuid_count};
        // SAFETY: CPUID exists on every x86-64 CPU; leaf 7 is read only where leaf 0 says
        // it exists.
        let max_leaf = unsafe { __cpuid(0) }.eax;
        if max_leaf < 7 {
            return false;
        }
        // SAFETY: as above.
        let edx = unsafe { __cpuid_count(7, 0) }.edx;
        let (amx_bf16, amx_tile) = (edx & (1 << 22) != 0, edx & (1 << 24) != 0);
        if !amx_bf16 || !amx_tile {
            return false;
        }
        const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
        const XFEATURE_XTILEDATA: libc::c_long = 18;
        // SAFETY: this request only changes which register state the kernel saves for
        // this process; where it is refused nothing changes.
        unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 }
    }
    #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
    false
}

/// The instructions of [`Precision::Bf16`](crate::cpu::Precision::Bf16)'s products on this
/// CPU: `AMX` ([`amx_bf16_granted`]), `AVX-512 BF16`, or `None` where bf16 is refused.
pub fn bf16_isa() -> Option<&'static str> {
    if amx_bf16_granted() { Some("AMX") } else { has_avx512_bf16().then_some("AVX-512 BF16") }
}

#[cfg(test)]
mod tests {
    /// The brand string is the one the kernel reports (Linux reads the same CPUID leaves).
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    #[test]
    fn the_cpu_model_is_the_one_linux_reports() {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap();
        let linux = cpuinfo.lines().find_map(|l| l.strip_prefix("model name")).unwrap();
        let linux = linux.trim_start_matches([' ', '\t', ':']).trim();
        assert_eq!(super::cpu_model(), linux);
        let avx2 = cpuinfo.split_whitespace().any(|flag| flag == "avx2");
        assert_eq!(super::gemm_isa() != "baseline", avx2);
    }
}
