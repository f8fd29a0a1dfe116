//! Datasets held in memory as u8 pixels, loaders for the formats users have on disk
//! (CIFAR-10 binary, MNIST/Fashion-MNIST idx, a folder of images per class) and a
//! background batch loader that normalises and augments on a CPU thread while the
//! device trains on the previous batch. Folders too large for memory are streamed
//! (`stream`): only their file list is held, images are decoded per batch on N threads.

pub mod augment;
pub mod preprocess;
pub mod transforms;
// Loaders: files, downloads and threads.
#[cfg(feature = "native")]
pub mod batch;
#[cfg(feature = "native")]
pub mod cifar10;
#[cfg(feature = "native")]
pub mod folder;
// Fashion-MNIST's files parse in the browser too (gzip through flate2's pure-Rust backend).
#[cfg(any(feature = "native", feature = "web"))]
pub mod idx;
#[cfg(feature = "native")]
pub mod stream;

pub use augment::{augment_into, normalise_into, Augment, Batch};
#[cfg(feature = "native")]
pub use batch::Loader;

use std::path::PathBuf;

/// A whole split in memory. Pixels stay u8 (4x smaller than f32) and are normalised per
/// batch; each image is CHW planar (channel, row, col), the layout the patchify kernel reads.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    pub name: String,
    /// `len * channels * height * width` bytes.
    pub images: Vec<u8>,
    /// One class index per image, `< class_names.len()`.
    pub labels: Vec<u32>,
    pub len: usize,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub class_names: Vec<String>,
    /// Per-channel mean in [0,1] units: input = (x/255 - mean) / std.
    pub mean: Vec<f32>,
    /// Per-channel standard deviation in [0,1] units.
    pub std: Vec<f32>,
    /// Whether horizontal flips keep labels valid (not for digits: a mirrored 2 is no 2).
    pub allow_flip: bool,
    /// A streamed folder: `images` is empty, the files are decoded per batch (and
    /// `height` x `width` is the size they are transformed to).
    #[cfg(feature = "native")]
    pub stream: Option<std::sync::Arc<stream::Stream>>,
}

impl Dataset {
    /// Bytes of one image (C*H*W).
    pub fn image_size(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// The CHW pixels of image `index`.
    pub fn image(&self, index: usize) -> &[u8] {
        let n = self.image_size();
        &self.images[index * n..(index + 1) * n]
    }

    /// A streamed folder (its images are decoded per batch, not held).
    pub fn is_streamed(&self) -> bool {
        #[cfg(feature = "native")]
        return self.stream.is_some();
        #[cfg(not(feature = "native"))]
        false
    }

    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        self.class_names.len()
    }

    /// The first `limit` images (all of them if `limit >= len`), for quick runs and tests.
    pub fn subset(&self, limit: usize) -> Dataset {
        let n = limit.min(self.len);
        let stored = if self.is_streamed() { 0 } else { n };
        Dataset {
            name: self.name.clone(),
            images: self.images[..stored * self.image_size()].to_vec(),
            labels: self.labels[..n].to_vec(),
            len: n,
            channels: self.channels,
            height: self.height,
            width: self.width,
            class_names: self.class_names.clone(),
            mean: self.mean.clone(),
            std: self.std.clone(),
            allow_flip: self.allow_flip,
            #[cfg(feature = "native")]
            stream: self
                .stream
                .as_ref()
                .map(|s| std::sync::Arc::new(s.truncated(n))),
        }
    }

    /// What a checkpoint records about the input pipeline, so `infer` and `eval` prepare
    /// images as training did: normalisation, and for streamed folders the eval transform.
    pub fn metadata(&self) -> Vec<(&'static str, String)> {
        let join = |v: &[f32]| {
            v.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        #[cfg_attr(not(feature = "native"), allow(unused_mut))] // streamed folders add theirs
        let mut m = vec![
            ("norm_mean", join(&self.mean)),
            ("norm_std", join(&self.std)),
        ];
        #[cfg(feature = "native")]
        if let Some(s) = &self.stream {
            m.push(("interpolation", s.options.interpolation.to_string()));
            if let Some(pct) = s.options.crop_pct {
                m.push(("crop_pct", pct.to_string()));
            }
            if let Some(hc) = s.options.hf_crop {
                m.push(("hf_crop", hc.to_metadata()));
            }
        }
        m
    }

    /// Every image resized (bilinear) to `height` x `width`: fine-tuning at a higher
    /// resolution than the data was stored at.
    pub fn resized(&self, height: usize, width: usize) -> Dataset {
        if (height, width) == (self.height, self.width) {
            return self.clone();
        }
        if self.is_streamed() {
            // Decoded per batch: transformed straight to the new size.
            return Dataset {
                height,
                width,
                ..self.clone()
            };
        }
        let mut images = Vec::with_capacity(self.len * self.channels * height * width);
        for i in 0..self.len {
            let img = self.image(i);
            for c in 0..self.channels {
                let plane = &img[c * self.height * self.width..(c + 1) * self.height * self.width];
                let luma = image::GrayImage::from_raw(
                    self.width as u32,
                    self.height as u32,
                    plane.to_vec(),
                )
                .unwrap_or_default();
                let out = image::imageops::resize(
                    &luma,
                    width as u32,
                    height as u32,
                    image::imageops::FilterType::Triangle,
                );
                images.extend_from_slice(out.as_raw());
            }
        }
        Dataset {
            images,
            height,
            width,
            ..self.clone()
        }
    }
}

/// Everything that can go wrong reading a dataset; each message names the file, what was
/// expected and what was found, so the user can fix it without reading the source.
#[derive(thiserror::Error, Debug)]
pub enum DataError {
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{} is truncated or corrupt ({what}): expected {expected_bytes} bytes, found {found_bytes}",
        path.display()
    )]
    Truncated {
        path: PathBuf,
        what: String,
        expected_bytes: u64,
        found_bytes: u64,
    },
    #[error(
        "{} is not {what}: expected magic number 0x{expected:08x}, found 0x{found:08x}",
        path.display()
    )]
    BadMagic {
        path: PathBuf,
        what: String,
        expected: u32,
        found: u32,
    },
    #[error("{}: {what}: expected {expected}, found {found}", path.display())]
    SizeMismatch {
        path: PathBuf,
        what: String,
        expected: String,
        found: String,
    },
    #[error(
        "{}: image {index} has label {label}, but the dataset has only {classes} classes (0..{classes})",
        path.display()
    )]
    BadLabel {
        path: PathBuf,
        index: usize,
        label: u32,
        classes: usize,
    },
    #[error("{} not found: {hint}", path.display())]
    Missing { path: PathBuf, hint: String },
    #[error("cannot decode image {}: {message}", path.display())]
    Decode { path: PathBuf, message: String },
    #[error(
        "{} is corrupt or incomplete: expected MD5 {expected}, found {found}; delete it and try again",
        path.display()
    )]
    Checksum {
        path: PathBuf,
        expected: String,
        found: String,
    },
    #[error("download of {url} failed: {message}. {hint}")]
    Download {
        url: String,
        message: String,
        hint: String,
    },
    #[error("{}: {message}", path.display())]
    EmptyFolder { path: PathBuf, message: String },
    #[error("{message}")]
    InvalidArgument { message: String },
}

impl DataError {
    #[cfg(feature = "native")]
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> DataError {
        DataError::Io {
            path: path.into(),
            source,
        }
    }
}

#[cfg(feature = "native")]
/// Reads a whole file, turning "not found" into `Missing` with the caller's hint.
pub(crate) fn read_file(path: &std::path::Path, hint: &str) -> Result<Vec<u8>, DataError> {
    std::fs::read(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            DataError::Missing {
                path: path.to_path_buf(),
                hint: hint.to_string(),
            }
        } else {
            DataError::io(path, e)
        }
    })
}

#[cfg(any(feature = "native", feature = "web"))]
/// Checks every label is a valid class index (a corrupt file otherwise surfaces as an
/// out-of-bounds write in the loss kernel, far from its cause).
pub(crate) fn check_labels(
    path: &std::path::Path,
    labels: &[u32],
    classes: usize,
) -> Result<(), DataError> {
    match labels.iter().position(|&l| l as usize >= classes) {
        Some(index) => Err(DataError::BadLabel {
            path: path.to_path_buf(),
            index,
            label: labels[index],
            classes,
        }),
        None => Ok(()),
    }
}
