//! `cargo xtask bench` (or `cargo bench -p vae-bench --bench throughput`): the machine's
//! measured arithmetic peaks and the whole training step (forward, backward, Adam) against
//! them, through the CPU step that `vae-train` uses and through candle's autograd.
//!
//! Each figure is the median over repeated runs after a warm-up, with the spread
//! (min–max). Pass `--quick` for fewer repetitions, `--only SECTION` (peak, step,
//! autograd; repeatable) to run only some sections, `--weights MODEL.safetensors` to time
//! the step from a trained model (a `vae-train` output) instead of an initialised one.
//! The per-layer breakdown and the encoder are `vae-model`'s bench, the LinearSVC fit
//! `classifier`'s, t-SNE `viz`'s.

use std::hint::black_box;

use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng, rngs::StdRng};
use vae_data::timing::measure;
use vae_model::{CpuStep, Precision, load_or_init_vae, loss_terms};
use vae_train::adam::{Adam, AdamConfig, named_vars};

fn gemm_peak(threads: usize, reps: usize) -> f64 {
    // SAFETY: the benchmark is single-threaded here; candle reads the variable per call.
    unsafe { std::env::set_var("RAYON_NUM_THREADS", threads.to_string()) };
    let dev = Device::Cpu;
    let a = Tensor::ones((1024, 1024), DType::F32, &dev).unwrap();
    let b = Tensor::ones((1024, 1024), DType::F32, &dev).unwrap();
    let s = measure(reps, || {
        black_box(a.matmul(&b).unwrap());
    });
    let gflops = 2.0 * 1024f64.powi(3) / s.median / 1e9;
    println!("GEMM 1024³, {threads} thread(s): {}  → {gflops:6.1} GFLOP/s", s);
    // SAFETY: as above.
    unsafe { std::env::remove_var("RAYON_NUM_THREADS") };
    gflops
}

/// The arithmetic peak of each vector instruction set the CPU has: every thread runs
/// independent FMA chains on registers (12 accumulators × lanes × 2 FLOP per
/// instruction), no memory traffic. Returns `(name, GFLOP/s)`, narrowest first.
fn fma_peaks(threads: usize, reps: usize) -> Vec<(&'static str, f64)> {
    let mut peaks = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        const ITERS: usize = 20_000_000;
        let mut time = |name: &'static str, lanes: usize, chains: unsafe fn(usize) -> f32| {
            let s = measure(reps, || {
                std::thread::scope(|scope| {
                    for _ in 0..threads {
                        // SAFETY: called only where the instruction set was detected.
                        scope.spawn(|| black_box(unsafe { chains(ITERS) }));
                    }
                })
            });
            let gflops = (threads * ITERS * 12 * lanes * 2) as f64 / s.median / 1e9;
            println!("FMA peak {name:8}, {threads} thread(s): {}  → {gflops:6.1} GFLOP/s", s);
            peaks.push((name, gflops));
        };
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            time("AVX2+FMA", 8, fma_chains_avx2);
        }
        if is_x86_feature_detected!("avx512f") {
            time("AVX-512", 16, fma_chains_avx512);
        }
    }
    let _ = (threads, reps);
    peaks
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn fma_chains_avx2(iters: usize) -> f32 {
    use std::arch::x86_64::*;
    let a = _mm256_set1_ps(0.999_999);
    let b = _mm256_set1_ps(1e-7);
    let mut acc = [_mm256_set1_ps(1.0); 12];
    for _ in 0..iters {
        for v in &mut acc {
            *v = _mm256_fmadd_ps(*v, a, b);
        }
    }
    let mut sum = [0f32; 8];
    let total = acc.iter().fold(_mm256_setzero_ps(), |s, v| _mm256_add_ps(s, *v));
    // SAFETY: `sum` holds 8 floats.
    unsafe { _mm256_storeu_ps(sum.as_mut_ptr(), total) };
    sum.iter().sum()
}

/// The bf16 peaks of the CPU step's bf16 kernels: AVX-512 BF16's `vdpbf16ps` (12 chains ×
/// 16 lanes × 2 pairs × 2 FLOP per instruction) and, where the process may use them, AMX
/// tiles (`tdpbf16ps`, 16 × 16 × 32 × 2 FLOP per instruction, four independent output
/// tiles). Returns `(name, GFLOP/s)` for each the CPU has.
fn bf16_peaks(threads: usize, reps: usize) -> Vec<(&'static str, f64)> {
    let mut peaks = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        let mut time = |name: &'static str, iters: usize, flop: usize, chains: unsafe fn(usize) -> f32| {
            let s = measure(reps, || {
                std::thread::scope(|scope| {
                    for _ in 0..threads {
                        // SAFETY: called only where the instructions were detected (and, for
                        // AMX, the tile state granted).
                        scope.spawn(|| black_box(unsafe { chains(iters) }));
                    }
                })
            });
            let gflops = (threads * iters * flop) as f64 / s.median / 1e9;
            println!("bf16 peak {name:12}, {threads} thread(s): {}  → {gflops:6.1} GFLOP/s", s);
            peaks.push((name, gflops));
        };
        if vae_model::machine::has_avx512_bf16() {
            time("AVX-512 BF16", 20_000_000, 12 * 16 * 2 * 2, dot_chains_avx512_bf16);
        }
        if vae_model::machine::amx_bf16_granted() {
            time("AMX", 5_000_000, 4 * 16 * 16 * 32 * 2, tile_chains_amx);
        }
    }
    let _ = (threads, reps);
    peaks
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
fn dot_chains_avx512_bf16(iters: usize) -> f32 {
    use std::arch::x86_64::*;
    let (a, b) = (
        _mm512_cvtne2ps_pbh(_mm512_set1_ps(1e-3), _mm512_set1_ps(1e-3)),
        _mm512_cvtne2ps_pbh(_mm512_set1_ps(1e-3), _mm512_set1_ps(1e-3)),
    );
    let mut acc = [_mm512_set1_ps(1.0); 12];
    for _ in 0..iters {
        for v in &mut acc {
            *v = _mm512_dpbf16_ps(*v, a, b);
        }
    }
    _mm512_reduce_add_ps(acc.iter().fold(_mm512_setzero_ps(), |s, v| _mm512_add_ps(s, *v)))
}

/// `iters` rounds of four independent `tdpbf16ps` on zeroed tiles (the inputs' values do
/// not change the timing).
///
/// # Safety
/// The CPU has AMX-TILE and AMX-BF16 and the process was granted the tile state.
#[cfg(target_arch = "x86_64")]
unsafe fn tile_chains_amx(iters: usize) -> f32 {
    use std::arch::asm;
    #[repr(C, align(64))]
    struct Config([u8; 64]);
    let mut config = Config([0; 64]);
    config.0[0] = 1; // palette 1
    for t in 0..8 {
        config.0[16 + 2 * t] = 64; // bytes per row
        config.0[48 + t] = 16; // rows
    }
    let mut out = [0f32; 256];
    // SAFETY: the caller's contract; the configuration is valid and `out` holds one tile.
    unsafe {
        asm!("ldtilecfg [{}]", in(reg) &config, options(nostack, readonly));
        asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            "tilezero tmm4",
            "tilezero tmm5",
            "tilezero tmm6",
            "tilezero tmm7",
            options(nostack, nomem)
        );
        for _ in 0..iters {
            asm!(
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tdpbf16ps tmm3, tmm5, tmm7",
                options(nostack, nomem)
            );
        }
        asm!("tilestored [{} + {}*1], tmm0", "tilerelease", in(reg) out.as_mut_ptr(), in(reg) 64usize, options(nostack));
    }
    out[0]
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn fma_chains_avx512(iters: usize) -> f32 {
    use std::arch::x86_64::*;
    let a = _mm512_set1_ps(0.999_999);
    let b = _mm512_set1_ps(1e-7);
    let mut acc = [_mm512_set1_ps(1.0); 12];
    for _ in 0..iters {
        for v in &mut acc {
            *v = _mm512_fmadd_ps(*v, a, b);
        }
    }
    _mm512_reduce_add_ps(acc.iter().fold(_mm512_setzero_ps(), |s, v| _mm512_add_ps(s, *v)))
}

fn random(shape: &[usize], rng: &mut StdRng) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_vec((0..n).map(|_| rng.random::<f32>()).collect::<Vec<_>>(), shape, &Device::Cpu).unwrap()
}

/// The first `n` MNIST training images of the project's copy, `(n, 1, 28, 28)` in [0, 1]:
/// the CPU step skips the features a ReLU leaves dead in a batch, which random pixels
/// hardly leave, so it is timed on the images it trains on, as PyTorch's side is.
fn mnist(n: usize) -> Tensor {
    let pixels = vae_data::testing::project_mnist_images(vae_data::SplitKind::Train, n);
    Tensor::from_vec(pixels, (n, 1, 28, 28), &Device::Cpu).unwrap()
}

/// How a step is computed.
#[derive(Clone, Copy, PartialEq)]
enum Path {
    /// The hand-written CPU step that `vae-train` uses, in this precision.
    Cpu(Precision),
    /// candle's autograd.
    Autograd,
}

/// One training step (forward, backward, Adam) at `batch`, along `path`, from the
/// weights of `weights` (a `vae-train` output) or from the initialisation of seed 0.
fn training_step(batch: usize, reps: usize, peaks: Peaks, (path, weights): (Path, Option<&std::path::Path>)) {
    let (vae, varmap) =
        load_or_init_vae(weights, 0, &Device::Cpu).unwrap_or_else(|e| panic!("--weights {weights:?}: {e}"));
    let mut adam = Adam::new(named_vars(&varmap).unwrap(), AdamConfig::default());
    let mut cpu_step = CpuStep::new(vae.config(), &varmap).unwrap();
    let autograd = path == Path::Autograd;
    if let Path::Cpu(precision) = path {
        cpu_step.set_precision(precision).unwrap();
    }
    let mut rng = StdRng::seed_from_u64(0);
    let x = mnist(batch);
    let eps = random(&[batch, 10], &mut rng);
    let (pixels, noise) =
        (x.flatten_all().unwrap().to_vec1::<f32>().unwrap(), eps.flatten_all().unwrap().to_vec1().unwrap());
    let s = measure(reps, || {
        if autograd {
            let terms = loss_terms(&vae.forward(&x, &eps).unwrap(), &x).unwrap();
            let loss = ((terms.bce + terms.kl).unwrap() / batch as f64).unwrap();
            adam.step(&loss.backward().unwrap(), None).unwrap();
        } else {
            cpu_step.run(&pixels, &noise).unwrap();
            adam.step_with(|name| cpu_step.grad(name), None).unwrap();
        }
    });
    // FLOPs per image: the forward pass's multiply-adds, and a backward of twice its cost,
    // all of the dense model's products: the dead features the CPU step skips count too, so
    // its rate is a dense-equivalent one, which can pass the peak.
    let step_flop = 3.0 * 2.0 * vae.config().forward_multiply_adds() as f64;
    let gflops = step_flop * batch as f64 / s.median / 1e9;
    // A bf16 step is set against the peak of its products' kernel, which does 3/4 of it.
    let (peak_name, peak, kind) = if path == Path::Cpu(Precision::Bf16) {
        (peaks.bf16.0, peaks.bf16.1, "bf16")
    } else {
        (peaks.fma.0, peaks.fma.1, "FMA")
    };
    println!(
        "training step, batch {batch:3}{}: {}  {:6.0} images/s  {gflops:5.1} dense GFLOP/s  {:4.1}% of the {peak_name} {kind} peak, {:4.1}% of GEMM 1024³  → {:.0} s per 60k-image training epoch",
        match path {
            Path::Autograd => " (candle autograd)",
            Path::Cpu(Precision::Bf16) => " (bf16)",
            Path::Cpu(Precision::F32) => "",
        },
        s,
        batch as f64 / s.median,
        100.0 * gflops / peak,
        100.0 * gflops / peaks.gemm,
        60_000.0 / batch as f64 * s.median
    );
}

/// The measured peaks "% of peak" is given against: the highest FMA peak of the
/// instruction sets the CPU has `(name, GFLOP/s)`, the peak of the bf16 products' kernel
/// (AMX or AVX-512 BF16), and the GEMM rate on 1024³.
#[derive(Clone, Copy)]
struct Peaks {
    fma: (&'static str, f64),
    bf16: (&'static str, f64),
    gemm: f64,
}

/// The sections `--only` can name.
const SECTIONS: [&str; 3] = ["peak", "step", "autograd"];

fn main() {
    vae_data::cli::init(None);
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let only: Vec<&str> = args.windows(2).filter(|w| w[0] == "--only").map(|w| w[1].as_str()).collect();
    let weights = args.windows(2).find(|w| w[0] == "--weights").map(|w| std::path::Path::new(&w[1]));
    if let Some(unknown) = only.iter().find(|s| !SECTIONS.contains(s)) {
        eprintln!("unknown section '{unknown}' for --only: expected one of {}", SECTIONS.join(", "));
        std::process::exit(2);
    }
    let run = |section: &str| only.is_empty() || only.contains(&section);
    let reps = if quick { 3 } else { 7 };
    let threads = rayon::current_num_threads();
    println!("CPU: {}", vae_model::machine::cpu_model());
    println!("matrix kernels (gemm, chosen at run time): {}", vae_model::machine::gemm_isa());
    println!("bf16 products (--precision bf16): {}", vae_model::machine::bf16_isa().unwrap_or("not on this CPU"));
    println!("threads: {threads} (RAYON_NUM_THREADS to change)");
    let mut peaks = Peaks { fma: ("no", f64::NAN), bf16: ("no", f64::NAN), gemm: f64::NAN };
    if run("peak") || run("step") || run("autograd") {
        fma_peaks(1, reps);
        // The highest measured, not merely the widest: on CPUs that split 512-bit
        // instructions in two (AMD Zen 4), AVX-512 has no more throughput than AVX2.
        peaks.fma = fma_peaks(threads, reps).into_iter().max_by(|a, b| a.1.total_cmp(&b.1)).unwrap_or(peaks.fma);
        // The bf16 products run on the widest kernel the process may use: AMX where
        // granted (listed last), otherwise AVX-512 BF16.
        peaks.bf16 = bf16_peaks(threads, reps).pop().unwrap_or(peaks.bf16);
        gemm_peak(1, reps);
        peaks.gemm = gemm_peak(threads, reps);
    }
    for batch in [128, 32] {
        if run("step") {
            training_step(batch, reps, peaks, (Path::Cpu(Precision::F32), weights));
            if vae_model::machine::has_avx512_bf16() {
                training_step(batch, reps, peaks, (Path::Cpu(Precision::Bf16), weights));
            }
        }
        if run("autograd") {
            training_step(batch, reps, peaks, (Path::Autograd, weights));
        }
    }
}
