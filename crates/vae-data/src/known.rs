//! The datasets the toolkit knows by checksum, with their class names.
//!
//! A dataset directory is identified from the SHA-256 of its decompressed files, which
//! [`crate::load_split`] computes anyway; unknown datasets get the class numbers as names.

/// A dataset known by the checksums of its decompressed IDX files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KnownDataset {
    /// Display name.
    pub name: &'static str,
    /// Names of classes 0–9.
    pub class_names: [&'static str; 10],
    /// `(file name, SHA-256 of its decompressed bytes)` of the four files.
    pub sha256: [(&'static str, &'static str); 4],
}

/// MNIST (LeCun, Cortes, Burges), CC BY-SA 3.0.
pub const MNIST: KnownDataset = KnownDataset {
    name: "MNIST",
    class_names: ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"],
    sha256: [
        ("train-images-idx3-ubyte", "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"),
        ("train-labels-idx1-ubyte", "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"),
        ("t10k-images-idx3-ubyte", "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"),
        ("t10k-labels-idx1-ubyte", "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"),
    ],
};

/// Fashion-MNIST (Xiao, Rasul, Vollgraf, 2017), MIT license; Debian's
/// `dataset-fashion-mnist` installs it in `/usr/share/datasets/fashion-mnist/`.
pub const FASHION_MNIST: KnownDataset = KnownDataset {
    name: "Fashion-MNIST",
    class_names: [
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ],
    sha256: [
        ("train-images-idx3-ubyte", "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"),
        ("train-labels-idx1-ubyte", "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"),
        ("t10k-images-idx3-ubyte", "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"),
        ("t10k-labels-idx1-ubyte", "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"),
    ],
};

/// Every known dataset.
pub const KNOWN_DATASETS: [KnownDataset; 2] = [MNIST, FASHION_MNIST];

/// The known dataset one of whose files has this name and checksum.
pub fn identify(checksums: &[(String, String)]) -> Option<&'static KnownDataset> {
    KNOWN_DATASETS
        .iter()
        .find(|d| checksums.iter().any(|(name, sum)| d.sha256.iter().any(|(n, s)| n == name && s == sum)))
}

/// Class names for a split's checksums: the known dataset's, or the class numbers.
pub fn class_names(checksums: &[(String, String)]) -> Vec<String> {
    match identify(checksums) {
        Some(d) => d.class_names.iter().map(|s| s.to_string()).collect(),
        None => (0..10).map(|k| k.to_string()).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mnist_in_data_is_identified_and_fashion_is_known() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/mnist");
        let test = crate::load_split(&dir, crate::SplitKind::Test).unwrap();
        assert_eq!(identify(&test.checksums).map(|d| d.name), Some("MNIST"));
        let fashion = [("t10k-labels-idx1-ubyte".to_string(), FASHION_MNIST.sha256[3].1.to_string())];
        assert_eq!(class_names(&fashion)[9], "Ankle boot");
        assert_eq!(class_names(&[("x".into(), "y".into())])[3], "3");
    }
}
