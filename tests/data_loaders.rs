//! Dataset readers on small files written in the real formats, their error messages, and
//! the batch loader's order, normalisation, augmentation and resumption.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use vit_wgpu::data::idx::IdxKind;
use vit_wgpu::data::{cifar10, folder, idx, Augment, DataError, Dataset, Loader};

/// A fresh, empty temporary directory per call (tests run in parallel), removed on drop.
struct TempDir(PathBuf);

impl std::ops::Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn temp_dir(name: &str) -> TempDir {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("vit-wgpu-data-{}-{name}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    TempDir(dir)
}

// ---------------------------------------------------------------- CIFAR-10

fn cifar_pixel(file: usize, record: usize, p: usize) -> u8 {
    ((file * 31 + record * 7 + p * 3 + p / 1024) % 256) as u8
}

fn cifar_label(file: usize, record: usize) -> u8 {
    ((file * 3 + record) % 10) as u8
}

/// Writes `records` records per file; file 0 is test_batch.bin, 1..=5 the training files.
fn write_cifar(dir: &Path, records: usize) {
    std::fs::create_dir_all(dir).unwrap();
    for file in 0..=5 {
        let name = if file == 0 {
            "test_batch.bin".to_string()
        } else {
            format!("data_batch_{file}.bin")
        };
        let mut bytes = Vec::new();
        for r in 0..records {
            bytes.push(cifar_label(file, r));
            bytes.extend((0..3072).map(|p| cifar_pixel(file, r, p)));
        }
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

#[test]
fn cifar10_reads_exact_values_in_chw_order() {
    let root = temp_dir("cifar");
    write_cifar(&root.join("cifar-10-batches-bin"), 3);
    let ds = cifar10::load(&root, true).unwrap();
    assert_eq!((ds.len, ds.channels, ds.height, ds.width), (15, 3, 32, 32));
    assert_eq!(ds.images.len(), 15 * 3072);
    assert_eq!(ds.class_names[0], "airplane");
    assert_eq!(ds.class_names[9], "truck");
    assert!(ds.allow_flip);
    assert_eq!(
        (ds.mean.clone(), ds.std.clone()),
        (vec![0.5; 3], vec![0.5; 3])
    );
    for k in 0..15 {
        let (file, r) = (k / 3 + 1, k % 3);
        assert_eq!(ds.labels[k], cifar_label(file, r) as u32);
        let img = ds.image(k);
        for c in 0..3 {
            for y in [0, 5, 31] {
                for x in [0, 17, 31] {
                    let p = c * 1024 + y * 32 + x;
                    assert_eq!(img[p], cifar_pixel(file, r, p), "image {k} c{c} y{y} x{x}");
                }
            }
        }
    }
    // The test split, read from the batches folder itself, with names from batches.meta.txt.
    let names: Vec<String> = (0..10).map(|i| format!("class{i}")).collect();
    let folder = root.join("cifar-10-batches-bin");
    std::fs::write(folder.join("batches.meta.txt"), names.join("\n") + "\n\n").unwrap();
    let test = cifar10::load(&folder, false).unwrap();
    assert_eq!(test.len, 3);
    assert_eq!(test.class_names, names);
    assert_eq!(
        test.labels,
        vec![
            cifar_label(0, 0) as u32,
            cifar_label(0, 1) as u32,
            cifar_label(0, 2) as u32
        ]
    );
    assert_eq!(test.image(2)[2048 + 33], cifar_pixel(0, 2, 2048 + 33));
}

#[test]
fn cifar10_truncated_file_is_reported() {
    let dir = temp_dir("cifar-trunc");
    write_cifar(&dir, 2);
    let path = dir.join("data_batch_3.bin");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 5]).unwrap();
    let err = cifar10::load(&dir, true).unwrap_err();
    match &err {
        DataError::Truncated {
            expected_bytes,
            found_bytes,
            ..
        } => {
            assert_eq!(*expected_bytes, 2 * 3073);
            assert_eq!(*found_bytes, 2 * 3073 - 5);
        }
        e => panic!("expected Truncated, got {e:?}"),
    }
    let msg = err.to_string();
    assert!(msg.contains("data_batch_3.bin"), "{msg}");
    assert!(msg.contains("3073"), "{msg}");
}

#[test]
fn cifar10_bad_label_is_reported() {
    let dir = temp_dir("cifar-label");
    write_cifar(&dir, 2);
    let path = dir.join("test_batch.bin");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[3073] = 10;
    std::fs::write(&path, bytes).unwrap();
    let err = cifar10::load(&dir, false).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::BadLabel {
                index: 1,
                label: 10,
                classes: 10,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("test_batch.bin"), "{err}");
}

#[test]
fn cifar10_missing_files_give_a_hint() {
    let dir = temp_dir("cifar-missing");
    let err = cifar10::load(&dir, true).unwrap_err();
    assert!(matches!(err, DataError::Missing { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("data_batch_1.bin"), "{msg}");
    assert!(msg.contains(cifar10::URL), "{msg}");
}

#[test]
fn cifar10_ensure_uses_files_already_present() {
    let root = temp_dir("cifar-ensure");
    write_cifar(&root.join("cifar-10-batches-bin"), 1);
    let folder = cifar10::ensure(&root).unwrap();
    assert_eq!(folder, root.join("cifar-10-batches-bin"));
    let flat = temp_dir("cifar-ensure-flat");
    write_cifar(&flat, 1);
    assert_eq!(cifar10::ensure(&flat).unwrap(), *flat);
}

#[test]
fn cifar10_ensure_rejects_a_corrupt_tarball_without_downloading() {
    let root = temp_dir("cifar-tarball");
    std::fs::write(root.join(cifar10::TARBALL), b"not really a tarball").unwrap();
    let err = cifar10::ensure(&root).unwrap_err();
    assert!(matches!(err, DataError::Checksum { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(cifar10::TARBALL), "{msg}");
    assert!(msg.contains(cifar10::MD5), "{msg}");
}

// ---------------------------------------------------------------- idx

fn idx_images(n: usize, rows: usize, cols: usize) -> Vec<u8> {
    let mut b = vec![0, 0, 8, 3];
    for d in [n, rows, cols] {
        b.extend((d as u32).to_be_bytes());
    }
    b.extend((0..n * rows * cols).map(|i| (i * 5 % 256) as u8));
    b
}

fn idx_labels(labels: &[u8]) -> Vec<u8> {
    let mut b = vec![0, 0, 8, 1];
    b.extend((labels.len() as u32).to_be_bytes());
    b.extend_from_slice(labels);
    b
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

#[test]
fn idx_plain_and_gzipped() {
    let dir = temp_dir("idx");
    // Training split plain, test split gzipped.
    std::fs::write(dir.join("train-images-idx3-ubyte"), idx_images(3, 4, 5)).unwrap();
    std::fs::write(dir.join("train-labels-idx1-ubyte"), idx_labels(&[7, 0, 9])).unwrap();
    std::fs::write(
        dir.join("t10k-images-idx3-ubyte.gz"),
        gzip(&idx_images(2, 4, 5)),
    )
    .unwrap();
    std::fs::write(
        dir.join("t10k-labels-idx1-ubyte.gz"),
        gzip(&idx_labels(&[1, 2])),
    )
    .unwrap();

    let train = idx::load(&dir, true, IdxKind::Mnist).unwrap();
    assert_eq!(
        (train.len, train.channels, train.height, train.width),
        (3, 1, 4, 5)
    );
    assert_eq!(train.labels, vec![7, 0, 9]);
    let expected: Vec<u8> = (0..60).map(|i| (i * 5 % 256) as u8).collect();
    assert_eq!(train.images, expected);
    assert!(!train.allow_flip, "digits must not be flipped");
    assert_eq!(train.class_names[3], "3");

    let test = idx::load(&dir, false, IdxKind::FashionMnist).unwrap();
    assert_eq!((test.len, test.height, test.width), (2, 4, 5));
    assert_eq!(test.labels, vec![1, 2]);
    assert_eq!(test.images, expected[..40].to_vec());
    assert!(test.allow_flip);
    assert_eq!(test.class_names[0], "T-shirt/top");
    assert_eq!(test.class_names[9], "Ankle boot");
    assert_eq!(
        (test.mean.clone(), test.std.clone()),
        (vec![0.5], vec![0.5])
    );
}

#[test]
fn idx_wrong_magic() {
    let dir = temp_dir("idx-magic");
    // Labels where the images should be.
    std::fs::write(dir.join("train-images-idx3-ubyte"), idx_labels(&[1, 2, 3])).unwrap();
    std::fs::write(dir.join("train-labels-idx1-ubyte"), idx_labels(&[1, 2, 3])).unwrap();
    let err = idx::load(&dir, true, IdxKind::Mnist).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::BadMagic {
                expected: 0x803,
                found: 0x801,
                ..
            }
        ),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains("train-images-idx3-ubyte"), "{msg}");
    assert!(msg.contains("0x00000803"), "{msg}");
}

#[test]
fn idx_truncated() {
    let dir = temp_dir("idx-trunc");
    let mut images = idx_images(3, 4, 5);
    images.truncate(images.len() - 7);
    std::fs::write(dir.join("t10k-images-idx3-ubyte.gz"), gzip(&images)).unwrap();
    std::fs::write(
        dir.join("t10k-labels-idx1-ubyte.gz"),
        gzip(&idx_labels(&[1, 2, 3])),
    )
    .unwrap();
    let err = idx::load(&dir, false, IdxKind::Mnist).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::Truncated {
                expected_bytes: 76,
                found_bytes: 69,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("t10k-images-idx3-ubyte.gz"),
        "{err}"
    );
}

#[test]
fn idx_label_count_mismatch() {
    let dir = temp_dir("idx-count");
    std::fs::write(dir.join("train-images-idx3-ubyte"), idx_images(3, 4, 5)).unwrap();
    std::fs::write(dir.join("train-labels-idx1-ubyte"), idx_labels(&[1, 2])).unwrap();
    let err = idx::load(&dir, true, IdxKind::FashionMnist).unwrap_err();
    assert!(matches!(err, DataError::SizeMismatch { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("train-labels-idx1-ubyte"), "{msg}");
    assert!(
        msg.contains("3 labels") && msg.contains("2 labels"),
        "{msg}"
    );
}

#[test]
fn idx_missing_files_give_the_install_hint() {
    let dir = temp_dir("idx-missing");
    let err = idx::load(&dir, true, IdxKind::FashionMnist).unwrap_err();
    assert!(matches!(err, DataError::Missing { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("train-images-idx3-ubyte"), "{msg}");
    assert!(
        msg.contains("apt-get install dataset-fashion-mnist"),
        "{msg}"
    );
    assert!(msg.contains("--data-dir"), "{msg}");
}

#[test]
fn real_fashion_mnist_test_split() {
    let dir = Path::new(idx::FASHION_MNIST_DEBIAN_DIR);
    assert!(
        dir.is_dir(),
        "{} is missing: run `apt-get install dataset-fashion-mnist`",
        dir.display()
    );
    let ds = idx::load(dir, false, IdxKind::FashionMnist)
        .unwrap_or_else(|e| panic!("{e} (run `apt-get install dataset-fashion-mnist`)"));
    assert_eq!(
        (ds.len, ds.channels, ds.height, ds.width),
        (10000, 1, 28, 28)
    );
    assert_eq!(ds.images.len(), 10000 * 28 * 28);
    let mut counts = [0usize; 10];
    for &l in &ds.labels {
        assert!(l < 10);
        counts[l as usize] += 1;
    }
    assert_eq!(counts, [1000; 10]);
    // Real pictures, not zeros: the average pixel is well inside (0, 255).
    let mean = ds.images.iter().map(|&p| p as f64).sum::<f64>() / ds.images.len() as f64;
    assert!(mean > 30.0 && mean < 120.0, "mean pixel {mean}");
}

// ---------------------------------------------------------------- folder

fn write_png_rgb(path: &Path, w: u32, h: u32, f: impl Fn(u32, u32) -> [u8; 3]) {
    image::RgbImage::from_fn(w, h, |x, y| image::Rgb(f(x, y)))
        .save(path)
        .unwrap();
}

#[test]
fn folder_of_pngs_and_jpgs() {
    let root = temp_dir("folder");
    for class in ["dog", "cat"] {
        std::fs::create_dir_all(root.join(class)).unwrap();
    }
    write_png_rgb(&root.join("cat/b.png"), 8, 6, |_, _| [10, 20, 30]);
    write_png_rgb(&root.join("cat/a.png"), 3, 3, |_, _| [200, 100, 0]);
    write_png_rgb(&root.join("dog/x.jpg"), 16, 16, |_, _| [128, 128, 128]);
    std::fs::write(root.join("cat/notes.txt"), "ignored").unwrap();

    let ds = folder::load(&root, 4, 5, 3).unwrap();
    assert_eq!(ds.class_names, vec!["cat", "dog"]);
    assert_eq!(ds.labels, vec![0, 0, 1]);
    assert_eq!((ds.len, ds.channels, ds.height, ds.width), (3, 3, 4, 5));
    assert_eq!(ds.images.len(), 3 * 3 * 20);
    // Uniform images stay uniform after resizing; CHW planes in R, G, B order.
    let a = ds.image(0);
    assert!(a[..20].iter().all(|&p| p == 200));
    assert!(a[20..40].iter().all(|&p| p == 100));
    assert!(a[40..].iter().all(|&p| p == 0));
    let b = ds.image(1);
    assert!(b[..20].iter().all(|&p| p == 10) && b[40..].iter().all(|&p| p == 30));
    // JPEG is lossy: close to grey.
    assert!(
        ds.image(2).iter().all(|&p| p.abs_diff(128) <= 3),
        "{:?}",
        ds.image(2)
    );

    let gray = folder::load(&root, 4, 4, 1).unwrap();
    assert_eq!((gray.channels, gray.images.len()), (1, 3 * 16));
    assert_eq!(
        (gray.mean.clone(), gray.std.clone()),
        (vec![0.5], vec![0.5])
    );
}

#[test]
fn load_image_is_chw() {
    let dir = temp_dir("image");
    let path = dir.join("img.png");
    write_png_rgb(&path, 3, 2, |x, y| {
        [x as u8 * 10 + y as u8, 100 + x as u8, 200 + y as u8]
    });
    let px = folder::load_image(&path, 2, 3, 3).unwrap();
    let mut expected = Vec::new();
    for c in 0..3u8 {
        for y in 0..2u8 {
            for x in 0..3u8 {
                expected.push(match c {
                    0 => x * 10 + y,
                    1 => 100 + x,
                    _ => 200 + y,
                });
            }
        }
    }
    assert_eq!(px, expected);
}

#[test]
fn folder_undecodable_image_names_the_file() {
    let root = temp_dir("folder-bad");
    std::fs::create_dir_all(root.join("a")).unwrap();
    write_png_rgb(&root.join("a/good.png"), 4, 4, |_, _| [1, 2, 3]);
    std::fs::write(
        root.join("a/broken.png"),
        b"\x89PNG\r\n\x1a\nthis is no png",
    )
    .unwrap();
    let err = folder::load(&root, 4, 4, 3).unwrap_err();
    assert!(matches!(err, DataError::Decode { .. }), "{err:?}");
    assert!(err.to_string().contains("broken.png"), "{err}");
}

#[test]
fn folder_without_classes_or_images() {
    let root = temp_dir("folder-empty");
    let err = folder::load(&root, 4, 4, 3).unwrap_err();
    assert!(matches!(err, DataError::EmptyFolder { .. }), "{err:?}");
    assert!(err.to_string().contains("class"), "{err}");
    std::fs::create_dir_all(root.join("only")).unwrap();
    std::fs::write(root.join("only/readme.txt"), "x").unwrap();
    let err = folder::load(&root, 4, 4, 3).unwrap_err();
    assert!(matches!(err, DataError::EmptyFolder { .. }), "{err:?}");
    assert!(err.to_string().contains("no images"), "{err}");
    let err = folder::load(&root.join("nope"), 4, 4, 3).unwrap_err();
    assert!(matches!(err, DataError::Missing { .. }), "{err:?}");
    let err = folder::load(&root, 4, 4, 2).unwrap_err();
    assert!(matches!(err, DataError::InvalidArgument { .. }), "{err:?}");
}

// ---------------------------------------------------------------- loader

/// `n` images of `c`x`h`x`w` whose first pixel is the image index.
fn synthetic(n: usize, c: usize, h: usize, w: usize, allow_flip: bool) -> Dataset {
    let size = c * h * w;
    let images = (0..n)
        .flat_map(|i| {
            (0..size).map(move |p| {
                if p == 0 {
                    i as u8
                } else {
                    ((i * 13 + p * 7) % 256) as u8
                }
            })
        })
        .collect();
    Dataset {
        name: "synthetic".into(),
        images,
        labels: (0..n).map(|i| (i % 10) as u32).collect(),
        len: n,
        channels: c,
        height: h,
        width: w,
        class_names: (0..10).map(|i| i.to_string()).collect(),
        mean: (0..c).map(|i| 0.4 + 0.05 * i as f32).collect(),
        std: (0..c).map(|i| 0.2 + 0.1 * i as f32).collect(),
        allow_flip,
        stream: None,
    }
}

fn norm(ds: &Dataset, i: usize) -> Vec<f32> {
    let plane = ds.height * ds.width;
    ds.image(i)
        .iter()
        .enumerate()
        .map(|(p, &x)| {
            let c = p / plane;
            (x as f32 / 255.0 - ds.mean[c]) / ds.std[c]
        })
        .collect()
}

#[test]
fn loader_normalises_exactly_in_order_without_shuffle() {
    let ds = Arc::new(synthetic(50, 3, 2, 3, true));
    let loader = Loader::new(ds.clone(), 16, false, None, 1, 0, false);
    assert_eq!(loader.num_batches(), 4);
    let batches: Vec<_> = loader.collect();
    assert_eq!(batches.len(), 4);
    assert_eq!(batches[3].len, 2);
    let size = ds.image_size();
    let mut i = 0;
    for b in &batches {
        assert_eq!(b.images.len(), b.len * size);
        for (k, img) in b.images.chunks_exact(size).enumerate() {
            assert_eq!(img, norm(&ds, i).as_slice(), "image {i}");
            assert_eq!(b.labels[k], (i % 10) as u32);
            i += 1;
        }
    }
    assert_eq!(i, 50);
    let dropped = Loader::new(ds, 16, false, None, 1, 0, true);
    assert_eq!(dropped.num_batches(), 3);
    assert_eq!(dropped.count(), 3);
}

/// Dataset indices of a loader's images (first pixel = index, first channel mean/std).
fn indices(ds: &Dataset, batches: &[vit_wgpu::data::Batch]) -> Vec<usize> {
    batches
        .iter()
        .flat_map(|b| b.images.chunks_exact(ds.image_size()).map(|img| img[0]))
        .map(|v| ((v * ds.std[0] + ds.mean[0]) * 255.0).round() as usize)
        .collect()
}

#[test]
fn loader_shuffle_is_a_seeded_permutation_per_epoch() {
    let ds = Arc::new(synthetic(100, 1, 2, 2, true));
    let run = |seed, epoch| -> Vec<_> {
        Loader::new(ds.clone(), 7, true, None, seed, epoch, false).collect()
    };
    let a = run(42, 3);
    assert_eq!(
        a,
        run(42, 3),
        "same seed and epoch must give the same batches"
    );
    let order = indices(&ds, &a);
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        (0..100).collect::<Vec<_>>(),
        "every image once per epoch"
    );
    assert_ne!(order, (0..100).collect::<Vec<_>>(), "shuffled");
    assert_ne!(order, indices(&ds, &run(42, 4)), "epochs differ");
    assert_ne!(order, indices(&ds, &run(43, 3)), "seeds differ");
    let loader = Loader::new(ds.clone(), 7, true, None, 42, 3, false);
    assert_eq!(loader.order(), order.as_slice());
}

#[test]
fn loader_resumes_mid_epoch_with_the_same_batches() {
    let ds = Arc::new(synthetic(60, 3, 8, 8, true));
    let aug = Some(Augment::standard());
    let full: Vec<_> = Loader::new(ds.clone(), 8, true, aug, 7, 2, true).collect();
    assert_eq!(full.len(), 7);
    let resumed: Vec<_> = Loader::new(ds.clone(), 8, true, aug, 7, 2, true)
        .start_batch(3)
        .collect();
    assert_eq!(resumed.as_slice(), &full[3..]);
    // Skipping after iteration has started gives the same batches too.
    let mut loader = Loader::new(ds.clone(), 8, true, aug, 7, 2, true);
    assert_eq!(loader.next().as_ref(), Some(&full[0]));
    loader.skip_batches(2);
    assert_eq!(loader.position(), 3);
    assert_eq!(loader.next().as_ref(), Some(&full[3]));
    // Dropping a loader mid-epoch must not hang its worker.
    drop(loader);
    assert_eq!(
        Loader::new(ds, 8, true, aug, 7, 2, true)
            .start_batch(99)
            .count(),
        0
    );
}

#[test]
fn flip_only_gives_the_image_or_its_mirror() {
    let ds = Arc::new(synthetic(40, 2, 3, 5, true));
    let aug = Some(Augment {
        crop_pad: 0,
        flip: true,
    });
    let batch = Loader::new(ds.clone(), 40, false, aug, 5, 0, false)
        .next()
        .unwrap();
    let (mut same, mut mirrored) = (0, 0);
    for (i, img) in batch.images.chunks_exact(ds.image_size()).enumerate() {
        let plain = norm(&ds, i);
        let mirror: Vec<f32> = plain
            .chunks_exact(5)
            .flat_map(|row| row.iter().rev().copied().collect::<Vec<_>>())
            .collect();
        if img == plain.as_slice() {
            same += 1;
        } else if img == mirror.as_slice() {
            mirrored += 1;
        } else {
            panic!("image {i} is neither itself nor its mirror");
        }
    }
    assert!(same > 5 && mirrored > 5, "same {same}, mirrored {mirrored}");

    // Digits: flips are off whatever the augment says.
    let digits = Arc::new(synthetic(40, 1, 3, 5, false));
    let batch = Loader::new(digits.clone(), 40, false, aug, 5, 0, false)
        .next()
        .unwrap();
    for (i, img) in batch.images.chunks_exact(digits.image_size()).enumerate() {
        assert_eq!(img, norm(&digits, i).as_slice());
    }
}

#[test]
fn random_crop_is_a_zero_padded_shift() {
    let ds = Arc::new(synthetic(30, 3, 8, 8, true));
    let aug = Some(Augment {
        crop_pad: 4,
        flip: false,
    });
    let batch = Loader::new(ds.clone(), 30, false, aug, 9, 1, false)
        .next()
        .unwrap();
    let mut shifts = std::collections::HashSet::new();
    for (i, img) in batch.images.chunks_exact(ds.image_size()).enumerate() {
        let src = ds.image(i);
        let found = (-4isize..=4)
            .flat_map(|dy| (-4isize..=4).map(move |dx| (dy, dx)))
            .find(|&(dy, dx)| {
                (0..3).all(|c| {
                    (0..8).all(|y| {
                        (0..8).all(|x| {
                            let (sy, sx) = (y as isize + dy, x as isize + dx);
                            let raw = if (0..8).contains(&sy) && (0..8).contains(&sx) {
                                src[c * 64 + sy as usize * 8 + sx as usize]
                            } else {
                                0
                            };
                            img[c * 64 + y * 8 + x] == (raw as f32 / 255.0 - ds.mean[c]) / ds.std[c]
                        })
                    })
                })
            });
        shifts.insert(found.unwrap_or_else(|| panic!("image {i} is not a padded crop")));
    }
    assert!(shifts.len() > 5, "crops should vary: {shifts:?}");
}

#[test]
fn subset_keeps_the_first_images() {
    let ds = synthetic(20, 1, 2, 2, false);
    let s = ds.subset(5);
    assert_eq!(s.len, 5);
    assert_eq!(s.images, ds.images[..20].to_vec());
    assert_eq!(s.labels, ds.labels[..5].to_vec());
    assert_eq!(ds.subset(100), ds);
}
