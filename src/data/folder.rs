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

/// The sorted class subfolders of `root` and every image in them (sorted), with its class
/// index: torchvision's ImageFolder order. Nothing is decoded.
pub struct FileList {
    pub class_names: Vec<String>,
    pub files: Vec<PathBuf>,
    pub labels: Vec<u32>,
}

pub fn scan(root: &Path) -> Result<FileList, DataError> {
    let classes: Vec<PathBuf> = list_dir(root)?.into_iter().filter(|p| p.is_dir()).collect();
    if classes.is_empty() {
        return Err(DataError::EmptyFolder {
            path: root.to_path_buf(),
            message: "no class subfolders found; expected root/<class>/<image>.png|jpg".into(),
        });
    }
    let mut list = FileList {
        class_names: Vec::with_capacity(classes.len()),
        files: Vec::new(),
        labels: Vec::new(),
    };
    for (index, class_dir) in classes.iter().enumerate() {
        list.class_names.push(
            class_dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        );
        for file in list_dir(class_dir)?.into_iter().filter(|p| is_image(p)) {
            list.files.push(file);
            list.labels.push(index as u32);
        }
    }
    if list.files.is_empty() {
        return Err(no_images(root, &classes));
    }
    Ok(list)
}

/// Class subfolders without a single image: says what was found and what was expected.
fn no_images(root: &Path, classes: &[PathBuf]) -> DataError {
    let names: Vec<String> = classes
        .iter()
        .take(4)
        .filter_map(|c| c.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    let more = if classes.len() > 4 { ", ..." } else { "" };
    // A split folder (train/, val/) or one more level of folders: the root is one too high.
    let nested = classes
        .iter()
        .any(|c| list_dir(c).is_ok_and(|entries| entries.iter().any(|e| e.is_dir())));
    let hint = if nested {
        "; they hold folders, not images: give the folder whose subfolders are the classes, or \
         one with train/<class>/ (and optionally val/ or test/)"
    } else {
        ""
    };
    DataError::EmptyFolder {
        path: root.to_path_buf(),
        message: format!(
            "no images (.png, .jpg, .jpeg) in its {} class subfolders ({}{more}); expected \
             {}/<class>/<image>.png|jpg{hint}",
            classes.len(),
            names.join(", "),
            root.display()
        ),
    }
}

/// `fraction` of each class's images (rounded; at least one of a class with two or more,
/// never all of it) held out for validation. Which ones comes from a shuffle per class with
/// a fixed seed, not the run's `--seed`, so every run on the same files, and `eval`, sees
/// the same split. Returns (training, held out), each in the list's order.
pub fn hold_out(list: &FileList, fraction: f64) -> (FileList, FileList) {
    let mut held = vec![false; list.files.len()];
    for class in 0..list.class_names.len() {
        let mut members: Vec<usize> = (0..list.labels.len())
            .filter(|&i| list.labels[i] as usize == class)
            .collect();
        let n = members.len();
        let take = match n {
            0 | 1 => 0,
            _ => ((n as f64 * fraction).round() as usize).clamp(1, n - 1),
        };
        // Fisher-Yates with splitmix64: the split must not change with the rand crate.
        let mut state = SPLIT_SEED ^ class as u64;
        for i in (1..n).rev() {
            let j = (splitmix64(&mut state) % (i as u64 + 1)) as usize;
            members.swap(i, j);
        }
        for &i in &members[..take] {
            held[i] = true;
        }
    }
    let part = |keep: bool| {
        let pick = |i: &usize| held[*i] != keep;
        let index: Vec<usize> = (0..held.len()).filter(pick).collect();
        FileList {
            class_names: list.class_names.clone(),
            files: index.iter().map(|&i| list.files[i].clone()).collect(),
            labels: index.iter().map(|&i| list.labels[i]).collect(),
        }
    };
    (part(true), part(false))
}

/// The held-out split's seed (mixed with the class index): fixed, see [`hold_out`].
const SPLIT_SEED: u64 = 0x5eed_0000_0000_0000;

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

pub fn folder_name(root: &Path) -> String {
    root.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "folder".to_string())
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
    load_list(scan(root)?, folder_name(root), (height, width, channels))
}

/// The images of `list` (see [`load`]) as a dataset called `name`.
pub fn load_list(
    list: FileList,
    name: String,
    (height, width, channels): (usize, usize, usize),
) -> Result<Dataset, DataError> {
    check_channels(channels)?;
    let mut images = Vec::new();
    for file in &list.files {
        images.extend(load_image(file, height, width, channels)?);
    }
    Ok(Dataset {
        name,
        len: list.labels.len(),
        images,
        labels: list.labels,
        channels,
        height,
        width,
        class_names: list.class_names,
        mean: vec![0.5; channels],
        std: vec![0.5; channels],
        allow_flip: true,
        stream: None,
    })
}

/// The folder `root/<class>/` as a streamed dataset: the file list is read now, images are
/// decoded per batch and transformed to `width` x `height`.
pub fn stream(
    root: &Path,
    height: usize,
    width: usize,
    channels: usize,
    options: super::stream::StreamOptions,
) -> Result<Dataset, DataError> {
    let list = scan(root)?;
    stream_list(
        list,
        root,
        folder_name(root),
        (height, width, channels),
        options,
    )
}

/// The images of `list`, found under `root`, streamed (see [`stream`]) as a dataset `name`.
pub fn stream_list(
    list: FileList,
    root: &Path,
    name: String,
    (height, width, channels): (usize, usize, usize),
    options: super::stream::StreamOptions,
) -> Result<Dataset, DataError> {
    check_channels(channels)?;
    if height == 0 || width == 0 {
        return Err(DataError::InvalidArgument {
            message: format!("image size must be positive, got {width}x{height}"),
        });
    }
    Ok(super::stream::dataset(
        name,
        root.to_path_buf(),
        &list.files,
        list.labels,
        list.class_names,
        (height, width, channels),
        options,
    ))
}

/// Image files named on a command line: files as given, folders expanded to every image
/// below them (recursively, sorted).
pub fn expand_inputs(inputs: &[PathBuf]) -> Result<Vec<PathBuf>, DataError> {
    let mut out = Vec::new();
    for p in inputs {
        if p.is_dir() {
            let mut stack = vec![p.clone()];
            let mut found = Vec::new();
            while let Some(dir) = stack.pop() {
                for entry in list_dir(&dir)? {
                    if entry.is_dir() {
                        stack.push(entry);
                    } else if is_image(&entry) {
                        found.push(entry);
                    }
                }
            }
            if found.is_empty() {
                return Err(DataError::EmptyFolder {
                    path: p.clone(),
                    message: "no images (.png, .jpg, .jpeg) found in this folder".into(),
                });
            }
            found.sort();
            out.extend(found);
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
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
