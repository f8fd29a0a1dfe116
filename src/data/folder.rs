//! A folder of images, one subfolder per class (`root/<class>/*.png|jpg|jpeg`), the layout
//! of torchvision's ImageFolder. Class indices follow the sorted subfolder names.

use super::{DataError, Dataset};
use image::imageops::FilterType;
use std::path::{Path, PathBuf};

const EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

fn check_channels(channels: usize) -> Result<(), DataError> {
    if channels == 1 || channels == 3 {
        Ok(())
    } else {
        Err(DataError::InvalidArgument {
            message: format!("images must have 1 (grayscale) or 3 (RGB) channels, not {channels}"),
        })
    }
}

fn list_dir(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let entries = std::fs::read_dir(dir).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            DataError::Missing {
                path: dir.to_path_buf(),
                hint: "expected a folder with one subfolder of images (png, jpg) per class"
                    .to_string(),
            }
        } else {
            DataError::io(dir, e)
        }
    })?;
    let mut paths = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| DataError::io(dir, e))?;
        let hidden = entry.file_name().to_string_lossy().starts_with('.');
        if !hidden {
            paths.push(entry.path());
        }
    }
    paths.sort();
    Ok(paths)
}

fn is_image(path: &Path) -> bool {
    path.is_file()
        && path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Loads every image under `root/<class>/`, resized to `width` x `height` and converted to
/// RGB (`channels == 3`) or grayscale (`channels == 1`).
pub fn load(
    root: &Path,
    height: usize,
    width: usize,
    channels: usize,
) -> Result<Dataset, DataError> {
    check_channels(channels)?;
    let classes: Vec<PathBuf> = list_dir(root)?.into_iter().filter(|p| p.is_dir()).collect();
    if classes.is_empty() {
        return Err(DataError::EmptyFolder {
            path: root.to_path_buf(),
            message: "no class subfolders found; expected root/<class>/<image>.png|jpg".into(),
        });
    }
    if classes.len() > 256 {
        return Err(DataError::EmptyFolder {
            path: root.to_path_buf(),
            message: format!(
                "{} class subfolders found, at most 256 supported",
                classes.len()
            ),
        });
    }
    let mut images = Vec::new();
    let mut labels = Vec::new();
    let mut class_names = Vec::new();
    for (index, class_dir) in classes.iter().enumerate() {
        class_names.push(
            class_dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        );
        for file in list_dir(class_dir)?.into_iter().filter(|p| is_image(p)) {
            images.extend(load_image(&file, height, width, channels)?);
            labels.push(index as u8);
        }
    }
    if labels.is_empty() {
        return Err(DataError::EmptyFolder {
            path: root.to_path_buf(),
            message: format!(
                "no images (.png, .jpg, .jpeg) found in the {} class subfolders",
                classes.len()
            ),
        });
    }
    let name = root
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "folder".to_string());
    Ok(Dataset {
        name,
        len: labels.len(),
        images,
        labels,
        channels,
        height,
        width,
        class_names,
        mean: vec![0.5; channels],
        std: vec![0.5; channels],
        allow_flip: true,
    })
}

/// Decodes one image, resizes it to `width` x `height` (triangle filter) and returns its
/// CHW u8 pixels: the same preprocessing as [`load`], for inference on single files.
pub fn load_image(
    path: &Path,
    height: usize,
    width: usize,
    channels: usize,
) -> Result<Vec<u8>, DataError> {
    check_channels(channels)?;
    if height == 0 || width == 0 {
        return Err(DataError::InvalidArgument {
            message: format!("image size must be positive, got {width}x{height}"),
        });
    }
    let decode_err = |message: String| DataError::Decode {
        path: path.to_path_buf(),
        message,
    };
    let reader = image::ImageReader::open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                DataError::Missing {
                    path: path.to_path_buf(),
                    hint: "no such image file".to_string(),
                }
            } else {
                DataError::io(path, e)
            }
        })?
        .with_guessed_format()
        .map_err(|e| DataError::io(path, e))?;
    let img = reader.decode().map_err(|e| decode_err(e.to_string()))?;
    let (w, h) = (width as u32, height as u32);
    let resize = |img: image::DynamicImage| {
        if img.width() == w && img.height() == h {
            img
        } else {
            img.resize_exact(w, h, FilterType::Triangle)
        }
    };
    let plane = height * width;
    let mut out = vec![0u8; channels * plane];
    if channels == 3 {
        let rgb = resize(image::DynamicImage::ImageRgb8(img.to_rgb8())).to_rgb8();
        for (i, px) in rgb.pixels().enumerate() {
            for c in 0..3 {
                out[c * plane + i] = px.0[c];
            }
        }
    } else {
        let luma = resize(image::DynamicImage::ImageLuma8(img.to_luma8())).to_luma8();
        out.copy_from_slice(luma.as_raw());
    }
    Ok(out)
}
