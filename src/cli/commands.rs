//! What each subcommand does.

use super::*;
use crate::data::{self, Dataset};
use crate::gpu::{enumerate_adapters, Gpu, GpuOptions};
use crate::model::checkpoint;
use crate::model::{HostParams, Kernels, Mode, Vit};
use crate::train::{self, TrainError, TrainOptions};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

pub type CliResult = Result<(), Box<dyn std::error::Error>>;

pub fn run(cli: Cli) -> CliResult {
    let opts = GpuOptions {
        backend: cli.backend,
        adapter: cli.adapter,
    };
    match cli.command {
        Command::Info => info(&opts),
        Command::Train(a) => train_cmd(&opts, a),
        Command::Eval(a) => eval_cmd(&opts, a),
        Command::Infer(a) => infer_cmd(&opts, a),
        Command::Bench(a) => bench_cmd(&opts, a),
        Command::Verify(a) => verify_cmd(&opts, a),
    }
}

fn info(opts: &GpuOptions) -> CliResult {
    let adapters = enumerate_adapters(opts.backend);
    if adapters.is_empty() {
        return Err(crate::gpu::GpuError::NoAdapter {
            backends: opts.backend.backends(),
        }
        .into());
    }
    for (i, a) in adapters.iter().enumerate() {
        print!(
            "[{i}] {}",
            crate::gpu::describe_adapter(&a.get_info(), &a.limits(), a.features())
        );
    }
    let gpu = Gpu::new(opts)?;
    println!("default choice: {}", gpu.info.name);
    print!("{}", variant_lines(&gpu));
    Ok(())
}

/// The kernel variants that will run on this device, and why (`info`, `verify`).
fn variant_lines(gpu: &Gpu) -> String {
    use crate::kernels::{attention::Attention, gemm::Gemm};
    let gemm = Gemm::choose(gpu);
    let attention = Attention::choose(gpu);
    format!(
        "  GEMM variant: {} ({})\n  attention variant: {} ({})\n",
        gemm.variant.name(),
        gemm.reason,
        attention.variant.name(),
        attention.reason
    )
}

/// Where a dataset is by default.
fn data_dir(d: &DataArgs) -> PathBuf {
    if let Some(p) = &d.data_dir {
        return p.clone();
    }
    match d.dataset {
        DatasetKind::Cifar10 => PathBuf::from("data/cifar10"),
        DatasetKind::Mnist => PathBuf::from("data/mnist"),
        DatasetKind::FashionMnist => {
            let debian = Path::new(data::idx::FASHION_MNIST_DEBIAN_DIR);
            if debian.is_dir() {
                debian.to_path_buf()
            } else {
                PathBuf::from("data/fashion-mnist")
            }
        }
        DatasetKind::Folder => PathBuf::from("data/images"),
    }
}

/// Load (downloading CIFAR-10 when absent) the train or test split.
pub fn load_split(
    d: &DataArgs,
    train: bool,
    size: Option<(usize, usize, usize)>,
) -> Result<Dataset, data::DataError> {
    let dir = data_dir(d);
    match d.dataset {
        DatasetKind::Cifar10 => {
            let dir = data::cifar10::ensure(&dir)?;
            data::cifar10::load(&dir, train)
        }
        DatasetKind::FashionMnist => data::idx::load(&dir, train, data::idx::IdxKind::FashionMnist),
        DatasetKind::Mnist => data::idx::load(&dir, train, data::idx::IdxKind::Mnist),
        DatasetKind::Folder => {
            let (h, w, c) = size.unwrap_or((32, 32, 3));
            let split = dir.join(if train { "train" } else { "test" });
            let root = if split.is_dir() { split } else { dir };
            data::folder::load(&root, h, w, c)
        }
    }
}

fn limit(ds: Dataset, n: Option<usize>) -> Dataset {
    match n {
        Some(n) if n < ds.len => ds.subset(n),
        _ => ds,
    }
}

fn train_cmd(opts: &GpuOptions, a: TrainArgs) -> CliResult {
    if a.batch_size == 0 {
        return Err("--batch-size must be at least 1".into());
    }
    // Starting weights decide the model's shape; otherwise the preset does. Flags override.
    let init = match &a.init {
        Some(path) => {
            let hints = checkpoint::ConfigHints {
                heads: a.model.heads,
                act: a.model.act,
                ln_eps: a.model.ln_eps,
                image_size: a.model.image_size,
            };
            Some(checkpoint::load_any(path, &hints)?)
        }
        None => None,
    };
    let base = match &init {
        Some((c, _, _)) => a.model.apply(c.clone()),
        None => a.model.config(None, None),
    };
    let size = Some((base.image_h, base.image_w, base.channels));
    let mut train_set = limit(load_split(&a.data, true, size)?, a.limit_train);
    let mut val_set = limit(load_split(&a.data, false, size)?, a.data.limit_eval);
    // The data decides channels and classes (and, without --init or --image-size, the
    // image size) unless flags say otherwise.
    let mut cfg = match &init {
        Some((c, _, _)) => {
            let mut c = a.model.apply(c.clone());
            if a.model.classes.is_none() {
                c.classes = train_set.class_names.len();
            }
            c
        }
        None => {
            let mut c = a
                .model
                .config(Some(train_set.channels), Some(train_set.class_names.len()));
            if a.model.image_size.is_none() {
                c.image_h = train_set.height;
                c.image_w = train_set.width;
            }
            c
        }
    };
    if cfg.channels != train_set.channels {
        return Err(TrainError::DataShape {
            dataset: train_set.name.clone(),
            found: format!("{} channels", train_set.channels),
            expected: format!("{} channels", cfg.channels),
        }
        .into());
    }
    if (train_set.height, train_set.width) != (cfg.image_h, cfg.image_w) {
        if !a.quiet {
            eprintln!(
                "resizing {} images from {}x{} to {}x{}",
                train_set.name, train_set.height, train_set.width, cfg.image_h, cfg.image_w
            );
        }
        train_set = train_set.resized(cfg.image_h, cfg.image_w);
        val_set = val_set.resized(cfg.image_h, cfg.image_w);
    }
    cfg.dropout = a.model.dropout.unwrap_or(cfg.dropout);
    cfg.validate()?;
    let init = match init {
        Some((init_cfg, params, _)) => Some(merge_init(&init_cfg, &params, &cfg, a.seed)?),
        None => None,
    };
    let out = a.out.clone().unwrap_or_else(|| {
        PathBuf::from("runs")
            .join(format!("{:?}-{:?}", a.model.preset, a.data.dataset).to_lowercase())
    });
    let gpu = Gpu::new(opts)?;
    if !a.quiet {
        eprintln!(
            "adapter: {}",
            gpu.describe().lines().next().unwrap_or_default()
        );
        eprintln!("model: {cfg}");
        eprintln!(
            "data: {} ({} train, {} test images); run folder: {}",
            train_set.name,
            train_set.len,
            val_set.len,
            out.display()
        );
    }
    let kernels = Kernels::new(&gpu);
    let topts = TrainOptions {
        cfg,
        epochs: a.epochs,
        batch_size: a.batch_size,
        lr: a.lr,
        weight_decay: a.weight_decay,
        warmup: a.warmup,
        cosine: !a.constant_lr,
        max_grad_norm: a.clip,
        seed: a.seed,
        out,
        resume: a.resume.clone(),
        init,
        max_steps: a.max_steps,
        augment: !a.no_augment,
        progress: !a.quiet,
        freeze_body: a.freeze_body,
    };
    let summary = train::train(
        &gpu,
        &kernels,
        &topts,
        Arc::new(train_set),
        Arc::new(val_set),
    )?;
    println!(
        "done: {} steps, best validation accuracy {:.4}; checkpoints in {}",
        summary.steps,
        summary.best_accuracy,
        summary.out.display()
    );
    Ok(())
}

/// The starting weights for `cfg` from a checkpoint of `init_cfg`: the body must match
/// (its position embeddings were already resampled to `cfg`'s grid); the head is kept when
/// it has the same shape, else replaced by a fresh one (the seed's fine-tuning recipe).
pub fn merge_init(
    init_cfg: &crate::model::Config,
    init: &HostParams,
    cfg: &crate::model::Config,
    seed: u64,
) -> Result<HostParams, Box<dyn std::error::Error>> {
    let body =
        |c: &crate::model::Config| (c.dim, c.depth, c.heads, c.mlp_hidden, c.patch, c.channels);
    if body(init_cfg) != body(cfg) || init_cfg.act != cfg.act {
        return Err(format!(
            "--init checkpoint's body ({init_cfg}) differs from the model to train ({cfg}); \
             only the head, the classes, the image size and dropout can change"
        )
        .into());
    }
    if init_cfg.head == cfg.head && init_cfg.classes == cfg.classes {
        return Ok(HostParams {
            specs: crate::model::params::param_specs(cfg),
            values: init.values.clone(),
        });
    }
    eprintln!(
        "new {:?} head with {} classes (the checkpoint had {:?} with {}); body kept",
        cfg.head, cfg.classes, init_cfg.head, init_cfg.classes
    );
    Ok(init.with_new_head(cfg, seed))
}

fn load_checkpoint(
    path: &Path,
    hints: &HintArgs,
) -> Result<(crate::model::Config, HostParams, checkpoint::TensorFile), TrainError> {
    Ok(checkpoint::load_any(path, &hints.hints())?)
}

fn eval_cmd(opts: &GpuOptions, a: EvalArgs) -> CliResult {
    let (cfg, params, _) = load_checkpoint(&a.checkpoint, &a.hints)?;
    let ds = limit(
        load_split(
            &a.data,
            false,
            Some((cfg.image_h, cfg.image_w, cfg.channels)),
        )?,
        a.data.limit_eval,
    );
    let ds = if ds.channels == cfg.channels {
        ds.resized(cfg.image_h, cfg.image_w)
    } else {
        ds
    };
    train::check_dataset(&cfg, &ds)?;
    let gpu = Gpu::new(opts)?;
    let kernels = Kernels::new(&gpu);
    let batch = a.batch_size.min(ds.len.max(1));
    let model = Vit::new(&gpu, &kernels, &cfg, &params, batch, Mode::Infer, 0)?;
    let r = train::evaluate(&gpu, &model, &Arc::new(ds.clone()))?;
    let per_class = r.per_class_accuracy();
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "images": r.images, "accuracy": r.accuracy, "loss": r.loss,
                "per_class_accuracy": per_class, "confusion": r.confusion, "classes": ds.class_names,
            })
        );
        return Ok(());
    }
    println!(
        "{} test images: accuracy {:.4}, loss {:.4}",
        r.images, r.accuracy, r.loss
    );
    println!("per class:");
    for (i, acc) in per_class.iter().enumerate() {
        let name = ds
            .class_names
            .get(i)
            .cloned()
            .unwrap_or_else(|| i.to_string());
        println!("  {name:>14}: {acc:.4}");
    }
    println!("confusion matrix (rows: true class, columns: predicted):");
    for row in &r.confusion {
        println!(
            "  {}",
            row.iter()
                .map(|v| format!("{v:>5}"))
                .collect::<Vec<_>>()
                .join("")
        );
    }
    Ok(())
}

fn softmax(row: &[f32]) -> Vec<f32> {
    let mx = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f64> = row.iter().map(|&v| ((v - mx) as f64).exp()).collect();
    let z: f64 = e.iter().sum();
    e.iter().map(|v| (v / z) as f32).collect()
}

fn infer_cmd(opts: &GpuOptions, a: InferArgs) -> CliResult {
    let (cfg, params, file) = load_checkpoint(&a.checkpoint, &a.hints)?;
    let names: Vec<String> = match &a.classes {
        Some(s) => s.split(',').map(|v| v.trim().to_string()).collect(),
        None => file
            .metadata
            .get("class_names")
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or_else(|| (0..cfg.classes).map(|i| i.to_string()).collect()),
    };
    // Decode everything first: a bad file is reported before any work is done.
    let mut images = Vec::with_capacity(a.images.len());
    for path in &a.images {
        images.push(data::folder::load_image(
            path,
            cfg.image_h,
            cfg.image_w,
            cfg.channels,
        )?);
    }
    let gpu = Gpu::new(opts)?;
    let kernels = Kernels::new(&gpu);
    let batch = images.len().min(64);
    let model = Vit::new(&gpu, &kernels, &cfg, &params, batch, Mode::Infer, 0)?;
    let per_image = cfg.channels * cfg.image_h * cfg.image_w;
    // The checkpoint records the normalisation it was trained with (default: 0.5, 0.5).
    let per_channel = |key: &str| -> Vec<f32> {
        let v: Vec<f32> = file
            .metadata
            .get(key)
            .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
            .unwrap_or_default();
        if v.len() == cfg.channels {
            v
        } else {
            vec![0.5; cfg.channels]
        }
    };
    let (mean, std) = (per_channel("norm_mean"), per_channel("norm_std"));
    for (chunk_paths, chunk) in a.images.chunks(batch).zip(images.chunks(batch)) {
        let mut input = vec![0f32; batch * per_image];
        for (i, img) in chunk.iter().enumerate() {
            for (j, &v) in img.iter().enumerate() {
                let c = j / (cfg.image_h * cfg.image_w);
                input[i * per_image + j] = (v as f32 / 255.0 - mean[c]) / std[c];
            }
        }
        model.write_batch(&gpu, &input, &vec![0u32; batch]);
        let mut encoder = gpu.device.create_command_encoder(&Default::default());
        model.record_forward(&mut encoder);
        gpu.queue.submit([encoder.finish()]);
        let logits: Vec<f32> = gpu.read(&model.logits)?;
        if let Some(dir) = &a.attention {
            let maps = model.attention_maps(&gpu, &kernels)?;
            let written =
                crate::viz::render::write_batch(dir, &cfg, batch, &maps, chunk_paths, chunk)?;
            for p in written {
                match a.json {
                    true => eprintln!("wrote {}", p.display()),
                    false => println!("wrote {}", p.display()),
                }
            }
        }
        for (i, path) in chunk_paths.iter().enumerate() {
            let probs = softmax(&logits[i * cfg.classes..(i + 1) * cfg.classes]);
            let mut order: Vec<usize> = (0..cfg.classes).collect();
            order.sort_by(|&x, &y| probs[y].total_cmp(&probs[x]));
            let top: Vec<(String, f32)> = order
                .iter()
                .take(a.top_k.max(1))
                .map(|&k| {
                    (
                        names.get(k).cloned().unwrap_or_else(|| k.to_string()),
                        probs[k],
                    )
                })
                .collect();
            if a.json {
                let preds: Vec<_> = top
                    .iter()
                    .map(|(n, p)| serde_json::json!({"class": n, "probability": p}))
                    .collect();
                println!(
                    "{}",
                    serde_json::json!({"image": path.display().to_string(), "top": preds})
                );
            } else {
                let s: Vec<String> = top
                    .iter()
                    .map(|(n, p)| format!("{n} {:.1}%", p * 100.0))
                    .collect();
                println!("{}: {}", path.display(), s.join(", "));
            }
        }
    }
    Ok(())
}

fn bench_cmd(opts: &GpuOptions, a: BenchArgs) -> CliResult {
    let cfg = a.model.config(None, None);
    cfg.validate()?;
    let gpu = Gpu::new(opts)?;
    let kernels = Kernels::new(&gpu);
    let params = HostParams::init(&cfg, 0);
    let mode = match a.mode {
        BenchMode::Train => Mode::Train,
        BenchMode::Infer => Mode::Infer,
    };
    let b = a.batch_size;
    let model = Vit::new(&gpu, &kernels, &cfg, &params, b, mode, 0)?;
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(1);
    let images =
        crate::reference::random_vec(&mut rng, b * cfg.channels * cfg.image_h * cfg.image_w, 1.0);
    let labels: Vec<u32> = (0..b).map(|i| (i % cfg.classes) as u32).collect();
    model.write_batch(&gpu, &images, &labels);
    let optim = crate::model::OptimConfig::default();
    let mut times = Vec::new();
    for i in 0..a.warmup_steps + a.steps {
        model.write_step(&gpu, i as u64 + 1, 1e-4, &optim);
        let t0 = Instant::now();
        let mut encoder = gpu.device.create_command_encoder(&Default::default());
        match mode {
            Mode::Train => model.record_train_step(&mut encoder),
            Mode::Infer => model.record_forward(&mut encoder),
        }
        gpu.queue.submit([encoder.finish()]);
        gpu.wait("bench step")?;
        if i >= a.warmup_steps {
            times.push(t0.elapsed().as_secs_f64());
        }
    }
    times.sort_by(f64::total_cmp);
    let mut families = std::collections::BTreeMap::new();
    if a.profile {
        for list in model.step_commands(mode) {
            for (family, s) in crate::gpu::profile_commands(&gpu, list)? {
                *families.entry(family).or_insert(0.0) += s;
            }
        }
    }
    let median = times[times.len() / 2];
    let ips = b as f64 / median;
    let mode_name = format!("{:?}", a.mode).to_lowercase();
    let preset = format!("{:?}", a.model.preset).to_lowercase();
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "preset": preset, "mode": mode_name, "batch_size": b, "images_per_second": ips,
                "median_step_seconds": median, "steps": a.steps, "adapter": gpu.info.name,
                "profile_seconds": families,
                "gemm_variant": kernels.gemm.variant().name(),
                "gemm_reason": kernels.gemm.reason(),
                "attention_variant": kernels.attention.variant().name(),
                "attention_reason": kernels.attention.reason(),
            })
        );
    } else {
        println!(
            "{preset} {mode_name} batch {b}: {ips:.1} images/s, median step {:.1} ms over {} steps on {}",
            median * 1e3,
            a.steps,
            gpu.info.name
        );
        print!("{}", variant_lines(&gpu));
        let total: f64 = families.values().sum();
        if total > 0.0 {
            println!(
                "per kernel family (each launch timed alone; sum {:.1} ms):",
                total * 1e3
            );
            let mut rows: Vec<_> = families.iter().collect();
            rows.sort_by(|x, y| y.1.total_cmp(x.1));
            for (family, s) in rows {
                println!(
                    "  {family:<18} {:>8.2} ms  {:>5.1}%",
                    s * 1e3,
                    100.0 * s / total
                );
            }
        }
    }
    Ok(())
}

fn verify_cmd(opts: &GpuOptions, a: VerifyArgs) -> CliResult {
    let gpu = Gpu::new(opts)?;
    print!("{}", variant_lines(&gpu));
    let tol = crate::verify::Tolerances {
        logits: a.logits_tol,
        loss: a.loss_tol,
        grads: a.grad_tol,
    };
    let mut failed = Vec::new();
    for path in &a.files {
        let report = crate::verify::verify(&gpu, path, tol)?;
        println!(
            "{}: {} (batch {})",
            path.display(),
            report.config,
            report.batch
        );
        println!(
            "  {:<40} {:>12} {:>10}  worst element (ours vs expected)",
            "tensor", "rel. error", "tolerance"
        );
        for c in &report.comparisons {
            println!(
                "  {:<40} {:>12.3e} {:>10.0e}  [{}] {:.6e} vs {:.6e}{}",
                c.name,
                c.relative_error,
                c.tolerance,
                c.worst_index,
                c.ours,
                c.expected,
                if c.passed() { "" } else { "  FAIL" }
            );
        }
        let worst = report
            .comparisons
            .iter()
            .filter(|c| c.name.starts_with("grad "))
            .map(|c| c.relative_error)
            .fold(0.0, f64::max);
        println!(
            "  largest gradient error {worst:.3e}: {}",
            if report.passed() { "PASS" } else { "FAIL" }
        );
        if !report.passed() {
            failed.push(path.display().to_string());
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("verification failed for {}", failed.join(", ")).into())
    }
}
