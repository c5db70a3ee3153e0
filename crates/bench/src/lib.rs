//! Home of the whole-step benchmark (`benches/throughput.rs`) and of the PyTorch
//! reference step it is compared with (`pytorch_step.py`); run both with
//! `cargo xtask bench`. The crate has no library code of its own.
