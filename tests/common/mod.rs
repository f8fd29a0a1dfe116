//! Shared by the kernel tests: one device for the whole test binary, random data, and the
//! relative-error check that prints the worst element.
#![allow(dead_code)]

use rand::SeedableRng;
use std::sync::OnceLock;
use vit_wgpu::gpu::{Gpu, GpuOptions};

pub const TOLERANCE: f64 = 1e-4;

/// The test device. Fails (never skips) when no adapter exists, saying how to get one.
pub fn gpu() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(
        || match pollster::block_on(Gpu::new(&GpuOptions::default())) {
            Ok(gpu) => {
                eprintln!("test adapter: {}", gpu.describe());
                gpu
            }
            Err(e) => panic!(
                "these tests need a wgpu adapter: {e}\n\
             (CI and machines without a GPU: `apt-get install mesa-vulkan-drivers`)"
            ),
        },
    )
}

/// A fresh seed each run (printed, so a failure can be replayed with VIT_TEST_SEED).
pub fn rng() -> rand::rngs::StdRng {
    let seed = std::env::var("VIT_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    eprintln!("seed {seed} (set VIT_TEST_SEED={seed} to replay)");
    rand::rngs::StdRng::seed_from_u64(seed)
}

pub fn random(rng: &mut impl rand::Rng, n: usize) -> Vec<f32> {
    vit_wgpu::reference::random_vec(rng, n, 1.0)
}

/// Assert ||ours-ref||/||ref|| < tol, naming the tensor and the worst element.
pub fn assert_close(what: &str, ours: &[f32], reference: &[f32], tol: f64) -> f64 {
    let (err, worst) = vit_wgpu::reference::relative_error(ours, reference);
    assert!(
        err < tol,
        "{what}: relative error {err:.3e} >= {tol:.0e}; worst element [{worst}]: ours {} vs reference {}",
        ours[worst],
        reference[worst]
    );
    eprintln!("{what}: relative error {err:.3e}");
    err
}

/// A device buffer filled with NaN, so any element the kernel fails to write shows up.
pub fn poisoned(n: usize) -> wgpu::Buffer {
    let g = gpu();
    let b = g.storage("output", n);
    g.poison(&b);
    b
}

pub fn read(b: &wgpu::Buffer) -> Vec<f32> {
    pollster::block_on(gpu().read(b)).expect("read-back")
}

pub fn read_n(b: &wgpu::Buffer, n: usize) -> Vec<f32> {
    let mut v = read(b);
    v.truncate(n);
    v
}

/// A synthetic 3-class dataset of 8x8 grey images whose class is the brightest quadrant:
/// learnable in a few steps (training, resume and curve tests).
pub fn synthetic(n: usize, seed: u64) -> vit_wgpu::data::Dataset {
    use rand::{Rng, SeedableRng};
    let mut r = rand::rngs::StdRng::seed_from_u64(seed);
    let mut images = vec![0u8; n * 64];
    let mut labels = vec![0u32; n];
    for i in 0..n {
        let label = r.random_range(0..3u8);
        labels[i] = label as u32;
        for y in 0..8 {
            for x in 0..8 {
                let quadrant = (y / 4) * 2 + x / 4;
                let base = if quadrant == label as usize { 180 } else { 40 };
                images[i * 64 + y * 8 + x] = base + r.random_range(0..60u8);
            }
        }
    }
    vit_wgpu::data::Dataset {
        name: "synthetic".into(),
        images,
        labels,
        len: n,
        channels: 1,
        height: 8,
        width: 8,
        class_names: vec!["a".into(), "b".into(), "c".into()],
        mean: vec![0.5],
        std: vec![0.5],
        allow_flip: true,
        stream: None,
    }
}

/// A fresh, empty folder under the system's temporary directory.
pub fn fresh_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("vit-wgpu-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// (epoch, step, train loss bits, val loss bits) of every line of a run's metrics.jsonl;
/// none when the file is not there yet.
pub fn metrics_log(dir: &std::path::Path) -> Vec<(u64, u64, u64, u64)> {
    let path = dir.join(vit_wgpu::train::run_folder::METRICS);
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|l| vit_wgpu::train::EpochMetrics::from_json(l).expect("a metrics record"))
        .map(|m| {
            (
                m.epoch,
                m.step,
                m.train_loss.to_bits(),
                m.val_loss.to_bits(),
            )
        })
        .collect()
}

/// An idx file (LeCun's format, uncompressed): magic, big-endian dims, bytes.
pub fn idx_bytes(magic: u32, dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut out = magic.to_be_bytes().to_vec();
    for d in dims {
        out.extend_from_slice(&d.to_be_bytes());
    }
    out.extend_from_slice(data);
    out
}

/// Labels as idx stores them: one byte each (the test datasets have at most 256 classes).
pub fn label_bytes(ds: &vit_wgpu::data::Dataset) -> Vec<u8> {
    ds.labels
        .iter()
        .map(|&l| u8::try_from(l).expect("an idx label fits a byte"))
        .collect()
}

/// Write `train` and `test` (1-channel datasets) as the four Fashion-MNIST idx files.
pub fn write_idx_dataset(
    dir: &std::path::Path,
    train: &vit_wgpu::data::Dataset,
    test: &vit_wgpu::data::Dataset,
) {
    for (prefix, ds) in [("train", train), ("t10k", test)] {
        let (n, h, w) = (ds.len as u32, ds.height as u32, ds.width as u32);
        std::fs::write(
            dir.join(format!("{prefix}-images-idx3-ubyte")),
            idx_bytes(0x803, &[n, h, w], &ds.images),
        )
        .expect("write images");
        std::fs::write(
            dir.join(format!("{prefix}-labels-idx1-ubyte")),
            idx_bytes(0x801, &[n], &label_bytes(ds)),
        )
        .expect("write labels");
    }
}

/// The four Fashion-MNIST files' MD5 after gunzip (the same whichever way they were
/// compressed: Debian recompresses them).
const FASHION_MNIST: [(&str, &str); 4] = [
    (
        "train-images-idx3-ubyte",
        "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    ),
    (
        "train-labels-idx1-ubyte",
        "9018921c3c673c538a1fc5bad174d6f9",
    ),
    ("t10k-images-idx3-ubyte", "8181f5470baa50b63fa0f6fddb340f0a"),
    ("t10k-labels-idx1-ubyte", "15d484375f8d13e6eb1aabb0c3f46965"),
];
const FASHION_MNIST_URL: &str = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com";

/// Where the Fashion-MNIST test finds its data: `data/fashion-mnist` (in the repository),
/// Debian's `/usr/share/datasets/fashion-mnist`, or a download into `data/fashion-mnist`
/// checked file by file against the MD5 of its contents. Panics naming every way when none
/// works.
pub fn fashion_mnist_dir() -> std::path::PathBuf {
    let local = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/fashion-mnist");
    let debian = std::path::Path::new(vit_wgpu::data::idx::FASHION_MNIST_DEBIAN_DIR);
    for dir in [&local, debian] {
        if vit_wgpu::data::idx::load(dir, false, vit_wgpu::data::idx::IdxKind::FashionMnist).is_ok()
        {
            return dir.to_path_buf();
        }
    }
    match download_fashion_mnist(&local) {
        Ok(()) => local,
        Err(e) => panic!(
            "Fashion-MNIST is needed by this test and was found neither in {} nor in {}, and \
             the download from {FASHION_MNIST_URL} failed: {e}\n\
             Either install it (Debian/Ubuntu: `apt-get install dataset-fashion-mnist`) or put \
             the four files {} (.gz or not) in {}",
            local.display(),
            debian.display(),
            FASHION_MNIST.map(|f| f.0).join(", "),
            local.display()
        ),
    }
}

fn download_fashion_mnist(dir: &std::path::Path) -> Result<(), String> {
    use md5::{Digest, Md5};
    use std::io::Read;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for (name, md5) in FASHION_MNIST {
        let url = format!("{FASHION_MNIST_URL}/{name}.gz");
        eprintln!("downloading {url}");
        let mut gz = Vec::new();
        ureq::get(&url)
            .call()
            .map_err(|e| format!("{url}: {e}"))?
            .into_body()
            .into_reader()
            .read_to_end(&mut gz)
            .map_err(|e| format!("{url}: {e}"))?;
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut raw)
            .map_err(|e| format!("{url}: not gzip data: {e}"))?;
        let found: String = Md5::digest(&raw)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        if found != md5 {
            return Err(format!(
                "{url}: MD5 of the contents is {found}, expected {md5}"
            ));
        }
        let path = dir.join(format!("{name}.gz"));
        let part = dir.join(format!("{name}.gz.part"));
        std::fs::write(&part, &gz).map_err(|e| format!("{}: {e}", part.display()))?;
        std::fs::rename(&part, &path).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}

/// Writes a folder of small JPEGs, `root/<class>/<i>.jpg` with class names `c000`, `c001`,
/// ...: `per_class` images per class, sizes 8x8 to 16x16 (varying aspect), each tinted by
/// its class so a model can tell some classes apart. Returns the number of files written.
pub fn jpeg_folder(root: &std::path::Path, classes: usize, per_class: usize, seed: u64) -> usize {
    use rand::{Rng, SeedableRng};
    let mut r = rand::rngs::StdRng::seed_from_u64(seed);
    for c in 0..classes {
        let dir = root.join(format!("c{c:03}"));
        std::fs::create_dir_all(&dir).expect("class folder");
        let tint = [
            (c * 37 % 256) as u8,
            (c * 91 % 256) as u8,
            (c * 13 % 256) as u8,
        ];
        for i in 0..per_class {
            let (w, h) = (r.random_range(8..=16u32), r.random_range(8..=16u32));
            let noise: Vec<u8> = (0..w * h * 3).map(|_| r.random_range(0..64u8)).collect();
            let img = image::RgbImage::from_fn(w, h, |x, y| {
                let k = ((y * w + x) * 3) as usize;
                image::Rgb([0, 1, 2].map(|ch| tint[ch] / 2 + noise[k + ch] + (x * 4) as u8))
            });
            img.save(dir.join(format!("{i:02}.jpg")))
                .expect("write jpeg");
        }
    }
    classes * per_class
}
