//! CIFAR-10, binary version: records of 1 label byte + 3072 pixel bytes (1024 R, 1024 G,
//! 1024 B, each 32x32 row-major), which is already the CHW layout we keep.

use super::{check_labels, read_file, DataError, Dataset};
use md5::{Digest, Md5};
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const URL: &str = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz";
pub const MD5: &str = "c32a1d4ab5d03f1284b67883e8d87530";
/// Name of the folder inside the tarball.
pub const SUBDIR: &str = "cifar-10-batches-bin";
pub const TARBALL: &str = "cifar-10-binary.tar.gz";
pub const CLASS_NAMES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];
const SIDE: usize = 32;
const PIXELS: usize = 3 * SIDE * SIDE;
const RECORD: usize = 1 + PIXELS;

fn batch_files(train: bool) -> Vec<String> {
    if train {
        (1..=5).map(|i| format!("data_batch_{i}.bin")).collect()
    } else {
        vec!["test_batch.bin".to_string()]
    }
}

fn has_all(folder: &Path) -> bool {
    batch_files(true)
        .into_iter()
        .chain(batch_files(false))
        .all(|f| folder.join(f).is_file())
}

/// The folder holding the batch files: `dir` itself or `dir/cifar-10-batches-bin`.
fn resolve(dir: &Path, train: bool) -> PathBuf {
    let first = &batch_files(train)[0];
    if dir.join(first).is_file() || !dir.join(SUBDIR).join(first).is_file() {
        dir.to_path_buf()
    } else {
        dir.join(SUBDIR)
    }
}

fn missing_hint(dir: &Path) -> String {
    format!(
        "expected the CIFAR-10 binary files (data_batch_1.bin..data_batch_5.bin, test_batch.bin) \
         in {} or {}; download {URL} and extract it there (or let the program download it)",
        dir.display(),
        dir.join(SUBDIR).display()
    )
}

/// Loads the training split (50000 images from five files) or the test split (10000).
pub fn load(dir: &Path, train: bool) -> Result<Dataset, DataError> {
    let folder = resolve(dir, train);
    let hint = missing_hint(dir);
    let mut images = Vec::new();
    let mut labels = Vec::new();
    for name in batch_files(train) {
        let path = folder.join(&name);
        let bytes = read_file(&path, &hint)?;
        if bytes.is_empty() || bytes.len() % RECORD != 0 {
            return Err(DataError::Truncated {
                path,
                what: format!(
                    "a CIFAR-10 batch file is a whole number of {RECORD}-byte records \
                     (1 label + {PIXELS} pixels)"
                ),
                expected_bytes: (bytes.len().div_ceil(RECORD).max(1) * RECORD) as u64,
                found_bytes: bytes.len() as u64,
            });
        }
        let n = bytes.len() / RECORD;
        images.reserve(n * PIXELS);
        let first = labels.len();
        for rec in bytes.chunks_exact(RECORD) {
            labels.push(rec[0] as u32);
            images.extend_from_slice(&rec[1..]);
        }
        // The index in the error is the record's position within this file.
        check_labels(&path, &labels[first..], 10)?;
    }
    let class_names = read_class_names(&folder.join("batches.meta.txt"));
    Ok(Dataset {
        name: "cifar10".to_string(),
        len: labels.len(),
        images,
        labels,
        channels: 3,
        height: SIDE,
        width: SIDE,
        class_names,
        mean: vec![0.5; 3],
        std: vec![0.5; 3],
        allow_flip: true,
        stream: None,
    })
}

/// Class names from `batches.meta.txt` (one per line) when it lists exactly ten.
fn read_class_names(path: &Path) -> Vec<String> {
    let from_file: Option<Vec<String>> = std::fs::read_to_string(path).ok().map(|s| {
        s.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect()
    });
    match from_file {
        Some(names) if names.len() == 10 => names,
        _ => CLASS_NAMES.iter().map(|s| s.to_string()).collect(),
    }
}

/// Makes sure the CIFAR-10 binary files are under `dir`, downloading and extracting the
/// official tarball if needed; returns the folder holding the batch files.
pub fn ensure(dir: &Path) -> Result<PathBuf, DataError> {
    for folder in [dir.to_path_buf(), dir.join(SUBDIR)] {
        if has_all(&folder) {
            return Ok(folder);
        }
    }
    std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
    let tarball = dir.join(TARBALL);
    if tarball.is_file() {
        let found = md5_file(&tarball)?;
        if found != MD5 {
            return Err(DataError::Checksum {
                path: tarball,
                expected: MD5.to_string(),
                found,
            });
        }
    } else {
        download(dir, &tarball)?;
    }
    extract(&tarball, dir)?;
    let folder = dir.join(SUBDIR);
    if has_all(&folder) {
        Ok(folder)
    } else {
        Err(DataError::Missing {
            path: folder,
            hint: format!(
                "{} was extracted but did not contain the expected batch files",
                tarball.display()
            ),
        })
    }
}

fn manual_hint(dir: &Path) -> String {
    format!(
        "Download it yourself from {URL} and place it (or its extracted {SUBDIR} folder) in {}",
        dir.display()
    )
}

fn md5_file(path: &Path) -> Result<String, DataError> {
    let mut file = File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut hasher = Md5::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf).map_err(|e| DataError::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Streams the tarball to `<name>.part`, hashing as it goes, and renames it only once the
/// MD5 matches, so an interrupted download never passes for a complete one.
fn download(dir: &Path, tarball: &Path) -> Result<(), DataError> {
    let fail = |message: String| DataError::Download {
        url: URL.to_string(),
        message,
        hint: manual_hint(dir),
    };
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(20)))
        .timeout_resolve(Some(Duration::from_secs(20)))
        .timeout_recv_response(Some(Duration::from_secs(20)))
        .build()
        .into();
    let response = agent.get(URL).call().map_err(|e| fail(e.to_string()))?;
    let body = response.into_body();
    let total = body.content_length();
    let mut reader = body.into_reader();
    let part = dir.join(format!("{TARBALL}.part"));
    let mut out = File::create(&part).map_err(|e| DataError::io(&part, e))?;
    let bar = match total {
        Some(n) => indicatif::ProgressBar::new(n),
        None => indicatif::ProgressBar::no_length(),
    };
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "downloading CIFAR-10 {bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    ) {
        bar.set_style(style);
    }
    let mut hasher = Md5::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                bar.abandon();
                return Err(fail(e.to_string()));
            }
        };
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])
            .map_err(|e| DataError::io(&part, e))?;
        bar.inc(n as u64);
    }
    bar.finish();
    out.flush().map_err(|e| DataError::io(&part, e))?;
    drop(out);
    let found = hex(&hasher.finalize());
    if found != MD5 {
        return Err(DataError::Checksum {
            path: part,
            expected: MD5.to_string(),
            found,
        });
    }
    std::fs::rename(&part, tarball).map_err(|e| DataError::io(tarball, e))
}

fn extract(tarball: &Path, dir: &Path) -> Result<(), DataError> {
    let file = File::open(tarball).map_err(|e| DataError::io(tarball, e))?;
    tar::Archive::new(flate2::read::GzDecoder::new(file))
        .unpack(dir)
        .map_err(|e| DataError::Decode {
            path: tarball.to_path_buf(),
            message: format!("cannot extract the archive: {e}"),
        })
}
