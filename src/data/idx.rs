//! MNIST and Fashion-MNIST in LeCun's idx format: a big-endian header (magic 0x00000803
//! for u8 images [n, rows, cols], 0x00000801 for u8 labels [n]) followed by the bytes,
//! usually gzipped. Gzip is detected from the content, not only the `.gz` suffix.
//!
//! [`from_bytes`] parses a split from the files' bytes (the browser's picked or fetched
//! files); [`load`] finds and reads them on disk (native).

use super::{check_labels, DataError, Dataset};
use std::io::Read;
use std::path::Path;
#[cfg(feature = "native")]
use std::path::PathBuf;

/// Where Debian's `dataset-fashion-mnist` package puts the four gzipped files.
pub const FASHION_MNIST_DEBIAN_DIR: &str = "/usr/share/datasets/fashion-mnist";
const IMAGES_MAGIC: u32 = 0x0000_0803;
const LABELS_MAGIC: u32 = 0x0000_0801;

/// Which idx dataset: same format, different names (and flips are wrong for digits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdxKind {
    Mnist,
    FashionMnist,
}

impl IdxKind {
    pub fn name(self) -> &'static str {
        match self {
            IdxKind::Mnist => "mnist",
            IdxKind::FashionMnist => "fashion-mnist",
        }
    }

    pub fn class_names(self) -> Vec<String> {
        match self {
            IdxKind::Mnist => (0..10).map(|d| d.to_string()).collect(),
            IdxKind::FashionMnist => [
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
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        }
    }

    /// A folder where the files may already be installed system-wide.
    pub fn default_dir(self) -> Option<&'static str> {
        match self {
            IdxKind::Mnist => None,
            IdxKind::FashionMnist => Some(FASHION_MNIST_DEBIAN_DIR),
        }
    }

    #[cfg(feature = "native")]
    fn hint(self, dir: &Path) -> String {
        let files = "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, \
                     t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz (gzipped or not)";
        match self {
            IdxKind::FashionMnist => format!(
                "install Fashion-MNIST with `apt-get install dataset-fashion-mnist` (it puts the \
                 files in {FASHION_MNIST_DEBIAN_DIR}), or pass --data-dir with a folder holding \
                 {files}; looked in {}",
                dir.display()
            ),
            IdxKind::Mnist => format!(
                "put the MNIST files {files} in {} or pass --data-dir with a folder holding them",
                dir.display()
            ),
        }
    }
}

#[cfg(feature = "native")]
/// Finds `<prefix>-<kind>-idx<d>-ubyte` with or without `.gz`, also accepting the
/// `<prefix>-<kind>.idx<d>-ubyte` spelling some mirrors use.
fn find(dir: &Path, stem: &str, dot_stem: &str) -> Option<PathBuf> {
    [stem, dot_stem]
        .iter()
        .flat_map(|s| [s.to_string(), format!("{s}.gz")])
        .map(|f| dir.join(f))
        .find(|p| p.is_file())
}

/// The file's bytes, gunzipped when they start with gzip's magic.
fn maybe_gunzip(path: &Path, raw: Vec<u8>) -> Result<Vec<u8>, DataError> {
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| DataError::Decode {
                path: path.to_path_buf(),
                message: format!("gzip data is corrupt or truncated: {e}"),
            })?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

fn be_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// Checks the header (magic, length) and returns the dims and the payload.
fn parse<'a>(
    path: &Path,
    bytes: &'a [u8],
    magic: u32,
    what: &str,
) -> Result<(Vec<usize>, &'a [u8]), DataError> {
    let ndim = (magic & 0xff) as usize;
    let header = 4 + 4 * ndim;
    if bytes.len() < 4 {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            what: format!("{what} header"),
            expected_bytes: header as u64,
            found_bytes: bytes.len() as u64,
        });
    }
    let found = be_u32(bytes, 0);
    if found != magic {
        return Err(DataError::BadMagic {
            path: path.to_path_buf(),
            what: format!("an idx {what} file"),
            expected: magic,
            found,
        });
    }
    if bytes.len() < header {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            what: format!("{what} header"),
            expected_bytes: header as u64,
            found_bytes: bytes.len() as u64,
        });
    }
    let dims: Vec<usize> = (0..ndim)
        .map(|i| be_u32(bytes, 4 + 4 * i) as usize)
        .collect();
    // Dims from the file may multiply past usize: checked, so a wrapped product never
    // passes for the file's size.
    let expected = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .and_then(|payload| payload.checked_add(header));
    let Some(expected) = expected else {
        return Err(DataError::SizeMismatch {
            path: path.to_path_buf(),
            what: format!("{what} dims {dims:?}"),
            expected: "dims whose product fits in memory".to_string(),
            found: format!("{} bytes", bytes.len()),
        });
    };
    if bytes.len() < expected {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            what: format!("{what} with dims {dims:?}"),
            expected_bytes: expected as u64,
            found_bytes: bytes.len() as u64,
        });
    }
    if bytes.len() > expected {
        return Err(DataError::SizeMismatch {
            path: path.to_path_buf(),
            what: format!("{what} with dims {dims:?} has trailing data; file size"),
            expected: format!("{expected} bytes"),
            found: format!("{} bytes", bytes.len()),
        });
    }
    Ok((dims, &bytes[header..]))
}

#[cfg(feature = "native")]
/// Loads the training split (`train-*`) or the test split (`t10k-*`) from `dir`.
pub fn load(dir: &Path, train: bool, kind: IdxKind) -> Result<Dataset, DataError> {
    let prefix = if train { "train" } else { "t10k" };
    let hint = kind.hint(dir);
    let locate = |part: &str, d: u8| {
        let stem = format!("{prefix}-{part}-idx{d}-ubyte");
        find(dir, &stem, &format!("{prefix}-{part}.idx{d}-ubyte")).ok_or_else(|| {
            DataError::Missing {
                path: dir.join(format!("{stem}.gz")),
                hint: hint.clone(),
            }
        })
    };
    let images_path = locate("images", 3)?;
    let labels_path = locate("labels", 1)?;
    let images = std::fs::read(&images_path).map_err(|e| DataError::io(&images_path, e))?;
    let labels = std::fs::read(&labels_path).map_err(|e| DataError::io(&labels_path, e))?;
    from_bytes((&images_path, images), (&labels_path, labels), kind)
}

/// One split from the bytes of its images file and its labels file (gzipped or not); the
/// paths name the files in errors.
pub fn from_bytes(
    (images_path, images): (&Path, Vec<u8>),
    (labels_path, labels): (&Path, Vec<u8>),
    kind: IdxKind,
) -> Result<Dataset, DataError> {
    let mut image_bytes = maybe_gunzip(images_path, images)?;
    let (dims, pixels) = parse(images_path, &image_bytes, IMAGES_MAGIC, "images")?;
    let (n, height, width) = (dims[0], dims[1], dims[2]);
    // The pixels in place (the training images are 47 MB; the browser's memory is tight).
    let header = image_bytes.len() - pixels.len();
    image_bytes.drain(..header);
    let label_bytes = maybe_gunzip(labels_path, labels)?;
    let (ldims, labels) = parse(labels_path, &label_bytes, LABELS_MAGIC, "labels")?;
    if ldims[0] != n {
        return Err(DataError::SizeMismatch {
            path: labels_path.to_path_buf(),
            what: format!(
                "number of labels does not match the {} images in {}",
                n,
                images_path.display()
            ),
            expected: format!("{n} labels"),
            found: format!("{} labels", ldims[0]),
        });
    }
    let class_names = kind.class_names();
    let labels: Vec<u32> = labels.iter().map(|&l| l as u32).collect();
    check_labels(labels_path, &labels, class_names.len())?;
    Ok(Dataset {
        name: kind.name().to_string(),
        images: image_bytes,
        labels,
        len: n,
        channels: 1,
        height,
        width,
        class_names,
        mean: vec![0.5],
        std: vec![0.5],
        allow_flip: kind == IdxKind::FashionMnist,
        #[cfg(feature = "native")]
        stream: None,
    })
}
