//! Probes of the posterior means alone: when the features are `[mu | logvar]`, how much
//! of the class is readable from `mu` by a linear model and by nearest neighbours.

use ndarray::ArrayView2;
use rayon::prelude::*;

/// Test accuracy of the majority vote of each test row's `k` nearest training rows
/// (Euclidean distance; a tied vote goes to the smallest class, equal distances to the
/// earlier row).
pub fn knn_accuracy(
    train: ArrayView2<f64>,
    train_labels: &[usize],
    test: ArrayView2<f64>,
    test_labels: &[usize],
    k: usize,
) -> f64 {
    let k = k.clamp(1, train.nrows().max(1));
    let classes = train_labels.iter().max().map_or(1, |m| m + 1);
    let correct: usize = (0..test.nrows())
        .into_par_iter()
        .filter(|&i| {
            let row = test.row(i);
            // The k smallest (distance, index) pairs, kept sorted.
            let mut nearest: Vec<(f64, usize)> = Vec::with_capacity(k + 1);
            for (j, other) in train.rows().into_iter().enumerate() {
                let d: f64 = row.iter().zip(other.iter()).map(|(a, b)| (a - b) * (a - b)).sum();
                if nearest.len() < k || d < nearest[k - 1].0 {
                    let at = nearest.partition_point(|&(e, _)| e <= d);
                    nearest.insert(at, (d, j));
                    nearest.truncate(k);
                }
            }
            let mut votes = vec![0usize; classes];
            for &(_, j) in &nearest {
                votes[train_labels[j]] += 1;
            }
            let best = votes.iter().enumerate().max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(&a.0))).map(|(c, _)| c);
            best == Some(test_labels[i])
        })
        .count();
    correct as f64 / test.nrows().max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn the_vote_of_the_nearest_rows_decides_ties_to_the_smaller_class() {
        let train = array![[0.0], [0.1], [0.2], [5.0], [5.1], [9.0]];
        let labels = [0, 0, 1, 1, 1, 2];
        let test = array![[0.05], [5.05], [8.0], [2.0]];
        // k = 3: {0, 0, 1} → 0; {1, 1, 0.2's 1} → 1; {9.0: 2, 5.1: 1, 5.0: 1} → 1, not 2;
        // 2.0: {0.2: 1, 0.1: 0, 0.0: 0} → 0.
        let truth = [0, 1, 1, 0];
        assert_eq!(knn_accuracy(train.view(), &labels, test.view(), &truth, 3), 1.0);
        assert_eq!(knn_accuracy(train.view(), &labels, test.view(), &[0, 1, 2, 0], 3), 0.75);
        // k = 1 is the nearest row; a two-way tie at k = 2 goes to the smaller class.
        assert_eq!(knn_accuracy(train.view(), &labels, test.view(), &[0, 1, 2, 1], 1), 1.0);
        let tie = array![[2.0]];
        assert_eq!(knn_accuracy(train.view(), &labels, tie.view(), &[0], 2), 1.0);
    }
}
