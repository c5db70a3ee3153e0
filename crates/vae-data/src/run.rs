//! Pieces of the contract between the stages that more than one crate needs: the columns
//! of `history.npy`, and the parsers of numeric flags that the stages and `xtask` share
//! (so that `cargo xtask pipeline` refuses exactly what a stage would refuse, before it
//! writes anything).

/// Columns of `history.npy` (and keys of each `history.json` record), in order.
pub const HISTORY_COLUMNS: [&str; 10] = [
    "epoch",
    "train_loss",
    "train_bce",
    "train_kl",
    "test_loss",
    "test_bce",
    "test_kl",
    "test_loss_at_mean",
    "test_bce_at_mean",
    "test_kl_at_mean",
];

fn number(s: &str) -> Result<f64, String> {
    s.parse().map_err(|e| format!("{e}"))
}

/// A positive finite number (a learning rate).
pub fn positive_finite(s: &str) -> Result<f64, String> {
    let x = number(s)?;
    if x.is_finite() && x > 0.0 { Ok(x) } else { Err(format!("must be a positive finite number, got {s}")) }
}

/// A finite number ≥ 0 (a weight).
pub fn non_negative_finite(s: &str) -> Result<f64, String> {
    let x = number(s)?;
    if x.is_finite() && x >= 0.0 { Ok(x) } else { Err(format!("must be a finite number ≥ 0, got {s}")) }
}

/// A number in `[0, 1]` (a fraction, a decay factor).
pub fn unit_interval(s: &str) -> Result<f64, String> {
    let x = number(s)?;
    if (0.0..=1.0).contains(&x) { Ok(x) } else { Err(format!("must be in [0, 1], got {s}")) }
}

/// A number strictly between 0 and 1 (a moving average's decay).
pub fn open_unit_interval(s: &str) -> Result<f64, String> {
    let x = number(s)?;
    if x > 0.0 && x < 1.0 { Ok(x) } else { Err(format!("must be strictly between 0 and 1, got {s}")) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_parsers_accept_their_range_only() {
        assert_eq!(positive_finite("2e-3"), Ok(2e-3));
        assert!(["0", "-1", "NaN", "inf", "x"].iter().all(|s| positive_finite(s).is_err()));
        assert_eq!((non_negative_finite("0"), non_negative_finite("4")), (Ok(0.0), Ok(4.0)));
        assert!(["-1", "NaN", "inf"].iter().all(|s| non_negative_finite(s).is_err()));
        assert_eq!((unit_interval("0"), unit_interval("1")), (Ok(0.0), Ok(1.0)));
        assert!(["-0.1", "1.5", "NaN"].iter().all(|s| unit_interval(s).is_err()));
        assert_eq!(open_unit_interval("0.999"), Ok(0.999));
        assert!(["0", "1", "NaN"].iter().all(|s| open_unit_interval(s).is_err()));
    }
}
