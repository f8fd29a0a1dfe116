//! Every reader against thousands of mutated inputs (bit flips, truncation at every
//! region, length and shape fields set to 0, to huge values and to values whose product
//! overflows usize, bytes inserted and removed): zero panics, every error names the file,
//! and no allocation larger than the input justifies (a counting allocator records the
//! largest request). Bounded in time; prints how many inputs each reader saw.
//! (Its own test binary: the allocator's record is process-wide.)

mod common;
use rand::{Rng, SeedableRng};
use std::alloc::{GlobalAlloc, Layout, System};
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use vit_wgpu::data::{self, idx::IdxKind};
use vit_wgpu::model::checkpoint::{self, EpochTotals, TrainState};
use vit_wgpu::model::config::{Act, Config, Head};
use vit_wgpu::model::HostParams;
use vit_wgpu::train::{run_folder::RunFolder, EpochMetrics};

/// The system allocator, recording the largest single request.
struct Counting;
static LARGEST: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        System.alloc_zeroed(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Inputs per reader at most, and the time each may take.
const INPUTS: usize = 5000;
const BUDGET: Duration = Duration::from_secs(4);

/// Values a length or shape field is set to.
const NASTY: [u64; 8] = [
    0,
    1,
    0x7fff_ffff,
    0xffff_ffff,
    0x1_0000_0000,
    u64::MAX,
    u64::MAX / 2 + 1,
    0x0010_0000,
];

fn mutate(rng: &mut dyn rand::RngCore, base: &[u8], fields: &[(usize, usize, bool)]) -> Vec<u8> {
    let mut v = base.to_vec();
    match rng.random_range(0..6) {
        // Bit flips.
        0 => {
            for _ in 0..rng.random_range(1..5) {
                if !v.is_empty() {
                    let i = rng.random_range(0..v.len());
                    v[i] ^= 1 << rng.random_range(0..8);
                }
            }
        }
        // Truncation anywhere, most often in the header.
        1 => {
            let end = if rng.random_bool(0.5) {
                64.min(v.len())
            } else {
                v.len()
            };
            v.truncate(rng.random_range(0..=end));
        }
        // A length/shape field (offset, width, big-endian) set to a nasty value.
        2 if !fields.is_empty() => {
            let (at, width, be) = fields[rng.random_range(0..fields.len())];
            let value = NASTY[rng.random_range(0..NASTY.len())];
            let bytes = if be {
                value.to_be_bytes()[8 - width..].to_vec()
            } else {
                value.to_le_bytes()[..width].to_vec()
            };
            if at + width <= v.len() {
                v[at..at + width].copy_from_slice(&bytes);
            }
        }
        // Bytes inserted.
        3 => {
            let at = rng.random_range(0..=v.len());
            let n = rng.random_range(1..16);
            let junk: Vec<u8> = (0..n).map(|_| rng.random()).collect();
            v.splice(at..at, junk);
        }
        // Bytes removed.
        4 if !v.is_empty() => {
            let at = rng.random_range(0..v.len());
            let n = rng.random_range(1..16).min(v.len() - at);
            v.drain(at..at + n);
        }
        // Random bytes overwritten.
        _ => {
            for _ in 0..rng.random_range(1..8) {
                if !v.is_empty() {
                    let i = rng.random_range(0..v.len());
                    v[i] = rng.random();
                }
            }
        }
    }
    v
}

/// Makes one input from the valid one.
type Mutations<'a> = dyn FnMut(&mut dyn rand::RngCore, &[u8]) -> Vec<u8> + 'a;

/// Run `read` on mutations of `base` written to `path`; assert no panic, an error naming
/// the file, and no allocation beyond `alloc_bound(input length)`. Returns inputs tried.
fn fuzz<E: std::fmt::Display>(
    what: &str,
    rng: &mut dyn rand::RngCore,
    path: &Path,
    base: &[u8],
    mutations: &mut Mutations<'_>,
    alloc_bound: &dyn Fn(usize) -> usize,
    read: &mut dyn FnMut() -> Result<(), E>,
) -> usize {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let t0 = Instant::now();
    let mut n = 0;
    let mut errors = 0;
    while n < INPUTS && t0.elapsed() < BUDGET {
        let input = mutations(rng, base);
        std::fs::write(path, &input).expect("write input");
        LARGEST.store(0, Ordering::Relaxed);
        let result = std::panic::catch_unwind(AssertUnwindSafe(&mut *read));
        let largest = LARGEST.load(Ordering::Relaxed);
        let replay = path.with_extension("panic");
        match result {
            Err(_) => {
                std::fs::write(&replay, &input).expect("save input");
                panic!(
                    "{what}: the reader panicked on input {n}, saved as {}",
                    replay.display()
                );
            }
            Ok(Err(e)) => {
                errors += 1;
                let msg = e.to_string();
                assert!(
                    msg.contains(&name),
                    "{what}: the error does not name {name}: {msg}"
                );
            }
            Ok(Ok(())) => {}
        }
        let bound = alloc_bound(input.len());
        if largest > bound {
            std::fs::write(&replay, &input).expect("save input");
            panic!(
                "{what}: input {n} ({} bytes, saved as {}) made an allocation of {largest} \
                 bytes, more than its size allows ({bound})",
                input.len(),
                replay.display()
            );
        }
        n += 1;
    }
    eprintln!(
        "{what}: {n} mutated inputs in {:.1}s, {errors} rejected with an error naming the \
         file, 0 panics",
        t0.elapsed().as_secs_f64()
    );
    n
}

/// An allocation may be a small multiple of the input, or a fixed small amount.
fn linear(len: usize) -> usize {
    (1 << 20) + 16 * len
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).expect("gzip");
    e.finish().expect("gzip")
}

fn tiny_config() -> Config {
    Config {
        image_h: 8,
        image_w: 8,
        channels: 1,
        patch: 4,
        dim: 8,
        depth: 1,
        heads: 2,
        mlp_hidden: 8,
        act: Act::Gelu,
        head: Head::Linear,
        dropout: 0.0,
        ln_eps: 1e-6,
        classes: 3,
        options: Default::default(),
    }
}

/// Offsets of the safetensors header's own length and of every number in its JSON.
fn safetensors_fields(bytes: &[u8]) -> Vec<(usize, usize, bool)> {
    let mut fields = vec![(0, 8, false), (0, 4, false), (4, 4, false)];
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    for (i, &b) in bytes[8..8 + n].iter().enumerate() {
        if b.is_ascii_digit() {
            fields.push((8 + i, 1, true));
        }
    }
    fields
}

/// Replace a number in a safetensors JSON header (a shape or an offset) with a huge one,
/// fixing the header length so the rest of the file still parses.
fn huge_number_in_header(rng: &mut dyn rand::RngCore, bytes: &[u8]) -> Vec<u8> {
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let header = String::from_utf8_lossy(&bytes[8..8 + n]).into_owned();
    let spans: Vec<(usize, usize)> = {
        let b = header.as_bytes();
        let mut v = Vec::new();
        let mut i = 0;
        while i < b.len() {
            if b[i].is_ascii_digit() && i > 0 && matches!(b[i - 1], b'[' | b',' | b' ') {
                let start = i;
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
                v.push((start, i));
            }
            i += 1;
        }
        v
    };
    if spans.is_empty() {
        return bytes.to_vec();
    }
    let (s, e) = spans[rng.random_range(0..spans.len())];
    let value = [
        "0",
        "4294967296",
        "18446744073709551615",
        "9223372036854775807",
        "4294967295",
        "99999999999999999999999",
    ][rng.random_range(0..6)];
    let new_header = format!("{}{value}{}", &header[..s], &header[e..]);
    let mut out = (new_header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(new_header.as_bytes());
    out.extend_from_slice(&bytes[8 + n..]);
    out
}

#[test]
fn every_reader_survives_thousands_of_mutated_inputs() {
    let seed = std::env::var("VIT_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    eprintln!("seed {seed} (set VIT_TEST_SEED={seed} to replay)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    // Inputs are files (the readers take paths): in memory where the system offers it, as
    // a disk write costs milliseconds on some machines.
    let shm = Path::new("/dev/shm");
    let dir = match shm.is_dir() {
        true => shm.join(format!("vit-wgpu-fuzz-{}", std::process::id())),
        false => std::env::temp_dir().join(format!("vit-wgpu-fuzz-{}", std::process::id())),
    };
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("fuzz dir");
    let mut total = Vec::new();

    // idx: images and labels, raw and gzipped.
    let ds = common::synthetic(12, 1);
    let images = common::idx_bytes(0x803, &[12, 8, 8], &ds.images);
    let labels = common::idx_bytes(0x801, &[12], &common::label_bytes(&ds));
    let idx_fields = [(0, 4, true), (4, 4, true), (8, 4, true), (12, 4, true)];
    for (file, base, other_name, other) in [
        (
            "t10k-images-idx3-ubyte",
            &images,
            "t10k-labels-idx1-ubyte",
            &labels,
        ),
        (
            "t10k-labels-idx1-ubyte",
            &labels,
            "t10k-images-idx3-ubyte",
            &images,
        ),
    ] {
        let d = dir.join(file);
        std::fs::create_dir_all(&d).expect("dir");
        std::fs::write(d.join(other_name), other).expect("write");
        let mut read = || data::idx::load(&d, false, IdxKind::FashionMnist).map(|_| ());
        let n = fuzz(
            &format!("idx {file}"),
            &mut rng,
            &d.join(file),
            base,
            &mut |r, b| mutate(r, b, &idx_fields),
            &linear,
            &mut read,
        );
        total.push(n);
        // Gzipped: mutations of the compressed bytes, and compressed mutations.
        let gz_dir = dir.join(format!("{file}-gz"));
        std::fs::create_dir_all(&gz_dir).expect("dir");
        std::fs::write(gz_dir.join(other_name), other).expect("write");
        let mut read = || data::idx::load(&gz_dir, false, IdxKind::FashionMnist).map(|_| ());
        let n = fuzz(
            &format!("idx {file}.gz"),
            &mut rng,
            &gz_dir.join(format!("{file}.gz")),
            &gzip(base),
            &mut |r, b| match r.random_bool(0.5) {
                true => mutate(r, b, &[]),
                false => gzip(&mutate(r, base, &idx_fields)),
            },
            // A gzip stream inflates at most ~1032x.
            &|len| linear(1100 * len),
            &mut read,
        );
        total.push(n);
    }

    // CIFAR-10: a test batch of five records.
    let cifar = dir.join("cifar");
    std::fs::create_dir_all(&cifar).expect("dir");
    let record = 1 + 3 * 32 * 32;
    let base: Vec<u8> = (0..5 * record)
        .map(|i| {
            if i % record == 0 {
                (i / record) as u8
            } else {
                i as u8
            }
        })
        .collect();
    let mut read = || data::cifar10::load(&cifar, false).map(|_| ());
    total.push(fuzz(
        "CIFAR-10 test_batch.bin",
        &mut rng,
        &cifar.join("test_batch.bin"),
        &base,
        &mut |r, b| {
            let mut v = mutate(r, b, &[]);
            // Keep some inputs whole-record sized so the label checks run too.
            if r.random_bool(0.5) {
                v.resize(v.len() / record * record, 0);
            }
            v
        },
        &linear,
        &mut read,
    ));

    // Image files: PNG (with the IHDR size fields, CRC fixed) and JPEG.
    let img = image::GrayImage::from_fn(8, 8, |x, y| image::Luma([(x * 30 + y * 3) as u8]));
    for (ext, format) in [
        ("png", image::ImageFormat::Png),
        ("jpg", image::ImageFormat::Jpeg),
    ] {
        let mut base = std::io::Cursor::new(Vec::new());
        img.write_to(&mut base, format).expect("encode");
        let base = base.into_inner();
        let path = dir.join(format!("image.{ext}"));
        let p = path.clone();
        let mut read = move || data::folder::load_image(&p, 8, 8, 1).map(|_| ());
        total.push(fuzz(
            &format!("image .{ext}"),
            &mut rng,
            &path,
            &base,
            &mut |r, b| {
                let mut v = mutate(r, b, &[(16, 4, true), (20, 4, true)]);
                if ext == "png" && v.len() >= 33 && v[12..16] == *b"IHDR" {
                    let mut crc = flate2::Crc::new();
                    crc.update(&v[12..29]);
                    v[29..33].copy_from_slice(&crc.sum().to_be_bytes());
                }
                v
            },
            // The image decoder allocates what the header says, within its own limit
            // (image::Limits, 512 MiB); a larger request would be unchecked.
            &|_| 512 << 20,
            &mut read,
        ));
    }

    // Model checkpoints and train-state files.
    let cfg = tiny_config();
    let params = HostParams::init(&cfg, 1);
    let model = checkpoint::model_file(&cfg, &params, &[("step", "3".into())])
        .to_bytes(Path::new("x"))
        .expect("encode");
    let state = TrainState {
        step: 3,
        epoch: 1,
        batch_in_epoch: 2,
        best_accuracy: 0.5,
        totals: EpochTotals {
            loss_sum: 1.5,
            accuracy_sum: 0.5,
            steps: 2,
            images: 16,
            seconds: 0.25,
        },
        moments: params
            .values
            .iter()
            .map(|v| (v.clone(), v.clone()))
            .collect(),
    };
    let state_bytes = checkpoint::state_file(&params, &state)
        .to_bytes(Path::new("x"))
        .expect("encode");
    let checkpoint_mutations = |r: &mut dyn rand::RngCore, b: &[u8]| -> Vec<u8> {
        match r.random_range(0..3) {
            0 => huge_number_in_header(r, b),
            _ => mutate(r, b, &safetensors_fields(b)),
        }
    };
    let model_path = dir.join("model.safetensors");
    let p = model_path.clone();
    let mut read = move || -> Result<(), checkpoint::CheckpointError> {
        checkpoint::read_step(&p)?;
        checkpoint::load_model(&p).map(|_| ())
    };
    total.push(fuzz(
        "model checkpoint",
        &mut rng,
        &model_path,
        &model,
        &mut { checkpoint_mutations },
        &linear,
        &mut read,
    ));
    let state_path = dir.join("last.state.safetensors");
    let p = state_path.clone();
    let mut read = move || -> Result<(), checkpoint::CheckpointError> {
        checkpoint::read_step(&p)?;
        checkpoint::load_train_state(&p, &params).map(|_| ())
    };
    total.push(fuzz(
        "train-state file",
        &mut rng,
        &state_path,
        &state_bytes,
        &mut { checkpoint_mutations },
        &linear,
        &mut read,
    ));

    // metrics.jsonl as a resume reads (and trims) it.
    let run = dir.join("run");
    let folder = RunFolder::open(&run, 1).expect("run folder");
    let line = |epoch: u64| EpochMetrics {
        epoch,
        step: epoch * 10,
        lr: 1e-3,
        train_loss: 0.5,
        train_accuracy: 0.8,
        val_loss: 0.6,
        val_accuracy: 0.7,
        images_per_second: 100.0,
        seconds: 1.0,
    };
    let metrics: String = (1..4).map(|e| line(e).to_json() + "\n").collect();
    let mut read = || folder.trim_metrics(25).map(|_| ());
    total.push(fuzz(
        "metrics.jsonl",
        &mut rng,
        &folder.metrics_path(),
        metrics.as_bytes(),
        &mut |r, b| mutate(r, b, &[]),
        &linear,
        &mut read,
    ));
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        total.iter().all(|&n| n >= 500),
        "too few inputs per reader: {total:?}"
    );
}
