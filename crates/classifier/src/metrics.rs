//! Classification metrics from a confusion matrix, with scikit-learn's definitions
//! (macro averages; a class never predicted has precision 0, as with `zero_division=0`).

/// Per-class scores.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ClassScores {
    /// Correct predictions of the class over all predictions of it.
    pub precision: f64,
    /// Correct predictions of the class over its true members.
    pub recall: f64,
    /// Harmonic mean of precision and recall.
    pub f1: f64,
    /// True members of the class in the evaluated set.
    pub support: u64,
}

/// Accuracy and macro-averaged scores, as `sklearn.metrics` reports them.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Metrics {
    /// Fraction of correct predictions.
    pub accuracy: f64,
    /// Mean of the per-class precisions.
    pub macro_precision: f64,
    /// Mean of the per-class recalls.
    pub macro_recall: f64,
    /// Mean of the per-class F1 scores (not the F1 of the two means).
    pub macro_f1: f64,
    /// Scores of each class.
    pub per_class: Vec<ClassScores>,
}

/// `matrix[true][predicted]` counts for `classes` classes.
pub fn confusion_matrix(truth: &[usize], predicted: &[usize], classes: usize) -> Vec<Vec<u64>> {
    let mut m = vec![vec![0u64; classes]; classes];
    for (&t, &p) in truth.iter().zip(predicted) {
        m[t][p] += 1;
    }
    m
}

impl Metrics {
    /// The four scores of the run directory's contract (`metrics.json`).
    pub fn scores(&self) -> vae_data::run::Scores {
        let Self { accuracy, macro_precision, macro_recall, macro_f1, .. } = *self;
        vae_data::run::Scores { accuracy, macro_precision, macro_recall, macro_f1 }
    }

    /// Metrics of a `matrix[true][predicted]` confusion matrix.
    pub fn from_confusion(m: &[Vec<u64>]) -> Self {
        let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        let total: u64 = m.iter().flatten().sum();
        let correct: u64 = (0..m.len()).map(|k| m[k][k]).sum();
        let per_class: Vec<ClassScores> = (0..m.len())
            .map(|k| {
                let support: u64 = m[k].iter().sum();
                let predicted: u64 = m.iter().map(|row| row[k]).sum();
                let precision = ratio(m[k][k], predicted);
                let recall = ratio(m[k][k], support);
                let f1 = if precision + recall > 0.0 { 2.0 * precision * recall / (precision + recall) } else { 0.0 };
                ClassScores { precision, recall, f1, support }
            })
            .collect();
        let mean = |f: fn(&ClassScores) -> f64| per_class.iter().map(f).sum::<f64>() / per_class.len().max(1) as f64;
        Self {
            accuracy: ratio(correct, total),
            macro_precision: mean(|c| c.precision),
            macro_recall: mean(|c| c.recall),
            macro_f1: mean(|c| c.f1),
            per_class,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use linfa::prelude::ToConfusionMatrix;
    use ndarray::Array1;

    #[test]
    fn hand_built_matrix_gives_hand_computed_scores_and_agrees_with_linfa() {
        let truth = [0, 0, 0, 0, 1, 1, 1, 2, 2, 2];
        let predicted = [0, 0, 0, 0, 0, 1, 1, 2, 2, 2];
        let m = confusion_matrix(&truth, &predicted, 3);
        assert_eq!(m, vec![vec![4, 0, 0], vec![1, 2, 0], vec![0, 0, 3]]);
        let metrics = Metrics::from_confusion(&m);
        // precision 4/5, 1, 1; recall 1, 2/3, 1; F1 8/9, 4/5, 1.
        let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
        assert!(close(metrics.accuracy, 0.9));
        assert!(close(metrics.macro_precision, (0.8 + 1.0 + 1.0) / 3.0));
        assert!(close(metrics.macro_recall, (1.0 + 2.0 / 3.0 + 1.0) / 3.0));
        assert!(close(metrics.macro_f1, (8.0 / 9.0 + 0.8 + 1.0) / 3.0));
        assert_eq!(metrics.per_class.iter().map(|c| c.support).collect::<Vec<_>>(), vec![4, 3, 3]);

        // linfa 0.8's ConfusionMatrix, built as its docs show
        // (`prediction.confusion_matrix(ground_truth)`), agrees on accuracy but has
        // precision and recall swapped relative to scikit-learn; its multi-class F1 is
        // the harmonic mean of the two macro averages, not the mean of the per-class F1
        // scores that scikit-learn (and the reference experiment) report. Hence our own metrics.
        let cm = Array1::from(predicted.to_vec()).confusion_matrix(Array1::from(truth.to_vec())).unwrap();
        assert!((f64::from(cm.accuracy()) - metrics.accuracy).abs() < 1e-6);
        assert!((f64::from(cm.precision()) - metrics.macro_recall).abs() < 1e-6, "{}", cm.precision());
        assert!((f64::from(cm.recall()) - metrics.macro_precision).abs() < 1e-6, "{}", cm.recall());
        let harmonic =
            2.0 * metrics.macro_precision * metrics.macro_recall / (metrics.macro_precision + metrics.macro_recall);
        assert!((f64::from(cm.f1_score()) - harmonic).abs() < 1e-6);
    }

    #[test]
    fn unpredicted_class_scores_zero_not_nan() {
        let m = confusion_matrix(&[0, 1, 1], &[0, 0, 0], 2);
        let metrics = Metrics::from_confusion(&m);
        assert_eq!(metrics.per_class[1].precision, 0.0);
        assert_eq!(metrics.per_class[1].f1, 0.0);
        assert!((metrics.macro_precision - (1.0 / 3.0) / 2.0).abs() < 1e-12);
    }
}
