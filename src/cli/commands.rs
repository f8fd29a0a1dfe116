//! What each subcommand does.

use super::*;
use crate::data::{self, Dataset};
use crate::dist::Communicator;
use crate::gpu::{enumerate_adapters, Gpu, GpuOptions};
use crate::model::{self, checkpoint, init};
use crate::model::{HostParams, Kernels, Mode, Vit};
use crate::train::{self, TrainError, TrainOptions};
use pollster::block_on;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

pub type CliResult = Result<(), Box<dyn std::error::Error>>;

pub fn run(cli: Cli) -> CliResult {
    let opts = GpuOptions {
        backend: cli.backend,
        adapter: cli.adapter,
        limits: Some(cli.limits),
    };
    match &cli.command {
        Command::Train(a) => resolve::check_train(a)?,
        Command::Eval(a) => resolve::check_eval(a)?,
        Command::Infer(a) => resolve::check_infer(a)?,
        Command::Bench(a) => resolve::check_bench(a)?,
        Command::Verify(a) => resolve::check_verify(a)?,
        Command::Info => {}
    }
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
    let adapters = block_on(enumerate_adapters(opts.backend));
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
    let gpu = block_on(Gpu::new(opts))?;
    println!("default choice: {}", gpu.info.name);
    let l = &gpu.limits;
    println!(
        "  limits: {} (storage binding {} MiB, {} storage buffers/stage, workgroup memory {} KiB, {} invocations)",
        gpu.mode.name(),
        l.max_storage_buffer_binding_size >> 20,
        l.max_storage_buffers_per_shader_stage,
        l.max_compute_workgroup_storage_size >> 10,
        l.max_compute_invocations_per_workgroup,
    );
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
            let (root, name, list) = folder_split(&dir, train, d.val_split)?;
            let mut ds = if d.in_memory {
                data::folder::load_list(list, name, (h, w, c))?
            } else {
                let workers = d.workers.unwrap_or_else(data::stream::default_workers);
                let options = data::stream::StreamOptions {
                    workers,
                    queue_depth: 2 * workers.max(1),
                    interpolation: d.interpolation,
                    crop_pct: Some(d.crop_pct),
                    ..Default::default()
                };
                data::folder::stream_list(list, &root, name, (h, w, c), options)?
            };
            set_normalisation(&mut ds, d)?;
            Ok(ds)
        }
    }
}

/// A folder dataset's training images (`train/`, else the folder itself) and its
/// validation folder (`val/`, else `test/`), if it has one.
fn folder_roots(dir: &Path) -> (PathBuf, Option<PathBuf>) {
    let train = Some(dir.join("train"))
        .filter(|p| p.is_dir())
        .unwrap_or_else(|| dir.to_path_buf());
    let val = ["val", "test"]
        .iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_dir());
    (train, val)
}

/// The share of the training images validation holds out when a folder has no val/ or
/// test/ and `--val-split` is not given.
const DEFAULT_VAL_SPLIT: f64 = 0.1;

/// The images of one split of a folder dataset, with their root and the dataset's name:
/// training takes `train/` (else the folder); evaluation `val/`, else `test/`. Without
/// either, `val_split` of each class is held out of the training images (see
/// `data::folder::hold_out`); `eval` without it takes a folder without train/ whole.
fn folder_split(
    dir: &Path,
    train: bool,
    val_split: Option<f64>,
) -> Result<(PathBuf, String, data::folder::FileList), data::DataError> {
    let (train_root, val_root) = folder_roots(dir);
    if let (false, Some(val)) = (train, &val_root) {
        return Ok((
            val.clone(),
            data::folder::folder_name(val),
            data::folder::scan(val)?,
        ));
    }
    let list = data::folder::scan(&train_root)?;
    let name = data::folder::folder_name(&train_root);
    match (val_split, val_root, train) {
        (Some(fraction), None, _) => {
            let (kept, held) = data::folder::hold_out(&list, fraction);
            Ok(match train {
                true => (train_root, name, kept),
                false => (train_root, format!("{name} (held out)"), held),
            })
        }
        (_, _, true) => Ok((train_root, name, list)),
        _ if train_root != dir => Err(data::DataError::InvalidArgument {
            message: format!(
                "{} has train/ but no val/ or test/ to evaluate on: give the run folder as \
                 --checkpoint (it knows its held-out split), --val-split FRACTION (the run's) \
                 for the same held-out images, or --data-dir {} for all of them",
                dir.display(),
                train_root.display()
            ),
        }),
        _ => Ok((train_root, name, list)),
    }
}

/// Checks `--val-split` against the data (only for folders without val/ or test/) and, for
/// training (`default`), sets it when such a folder needs one.
fn resolve_val_split(d: &mut DataArgs, default: Option<f64>) -> Result<(), resolve::UsageError> {
    let bad = |value: f64, allowed: String| resolve::UsageError::Flag {
        flag: "val-split",
        value: value.to_string(),
        allowed,
    };
    if d.dataset != DatasetKind::Folder {
        return match d.val_split {
            Some(v) => Err(bad(
                v,
                "only for --dataset folder (the other datasets have their own test split)".into(),
            )),
            None => Ok(()),
        };
    }
    let dir = data_dir(d);
    match (folder_roots(&dir).1, d.val_split) {
        (Some(val), Some(v)) => Err(bad(
            v,
            format!(
                "{} has {}, which validation uses; --val-split is for folders without val/ or test/",
                dir.display(),
                val.display()
            ),
        )),
        (None, None) => {
            d.val_split = default;
            Ok(())
        }
        _ => Ok(()),
    }
}

/// `imagenet`, `0.5` (or any single value, for every channel) or one value per channel.
pub fn parse_norm(s: &str, channels: usize, std: bool) -> Result<Vec<f32>, String> {
    let values: Vec<f32> = match s.trim().to_ascii_lowercase().as_str() {
        "imagenet" if channels == 3 && std => vec![0.229, 0.224, 0.225],
        "imagenet" if channels == 3 => vec![0.485, 0.456, 0.406],
        "imagenet" => {
            return Err(format!(
                "'imagenet' normalisation is for 3 channels, the data has {channels}"
            ))
        }
        list => list
            .split(',')
            .map(|v| v.trim().parse::<f32>())
            .collect::<Result<_, _>>()
            .map_err(|_| format!("'{s}' is not imagenet, 0.5 or comma-separated numbers"))?,
    };
    let values = if values.len() == 1 {
        vec![values[0]; channels]
    } else {
        values
    };
    if values.len() != channels {
        return Err(format!(
            "'{s}' gives {} values, the data has {channels} channels",
            values.len()
        ));
    }
    if std && values.iter().any(|&v| v <= 0.0 || !v.is_finite()) {
        return Err(format!("--std '{s}': every value must be positive"));
    }
    Ok(values)
}

/// Applies `--mean` / `--std`.
fn set_normalisation(ds: &mut Dataset, d: &DataArgs) -> Result<(), data::DataError> {
    let invalid = |message| data::DataError::InvalidArgument { message };
    if let Some(m) = &d.mean {
        ds.mean = parse_norm(m, ds.channels, false).map_err(|e| invalid(format!("--mean: {e}")))?;
    }
    if let Some(v) = &d.std {
        ds.std = parse_norm(v, ds.channels, true).map_err(|e| invalid(format!("--std: {e}")))?;
    }
    Ok(())
}

/// The normalisation a checkpoint was trained with (default: 0.5, 0.5).
fn checkpoint_norm(file: &checkpoint::TensorFile, channels: usize) -> (Vec<f32>, Vec<f32>) {
    let per_channel = |key: &str| -> Vec<f32> {
        let v: Vec<f32> = file
            .metadata
            .get(key)
            .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
            .unwrap_or_default();
        if v.len() == channels {
            v
        } else {
            vec![0.5; channels]
        }
    };
    (per_channel("norm_mean"), per_channel("norm_std"))
}

fn limit(ds: Dataset, n: Option<usize>) -> Dataset {
    match n {
        Some(n) if n < ds.len => ds.subset(n),
        _ => ds,
    }
}

/// Under mpirun/srun, this rank's device: `--adapter`, or its node-local rank modulo the
/// adapters of the best type; one line names rank, size and adapter. Else `Gpu::new`.
fn rank_gpu(opts: &GpuOptions, comm: &dyn Communicator) -> Result<Gpu, crate::gpu::GpuError> {
    if comm.size() == 1 {
        return block_on(Gpu::new(opts));
    }
    let types: Vec<_> = block_on(enumerate_adapters(opts.backend))
        .iter()
        .map(|a| a.get_info().device_type)
        .collect();
    let adapter = crate::dist::adapter_for_rank(opts.adapter, comm.local_rank(), &types);
    let gpu = block_on(Gpu::new(&GpuOptions { adapter, ..*opts }))?;
    let line = format!(
        "rank {}/{}: adapter [{}] {}\n",
        comm.rank(),
        comm.size(),
        adapter.unwrap_or(0),
        gpu.describe().lines().next().unwrap_or_default()
    );
    rank_line(&line);
    Ok(gpu)
}

/// One write, so the ranks' lines do not interleave mid-line (stderr is unbuffered).
fn rank_line(line: &str) {
    use std::io::Write;
    let _ = std::io::stderr().write_all(line.as_bytes());
}

/// Several ranks: an error on one ends the whole job (MPI_Abort) with the rank and the
/// message, instead of leaving the others waiting in a collective.
fn abort_on_error(comm: &dyn Communicator, result: CliResult) -> CliResult {
    match result {
        Err(e) if comm.size() > 1 => {
            rank_line(&format!(
                "rank {}/{}: error: {e}\n",
                comm.rank(),
                comm.size()
            ));
            comm.abort(1)
        }
        r => r,
    }
}

fn train_cmd(opts: &GpuOptions, a: TrainArgs) -> CliResult {
    let comm = crate::dist::init()?;
    let result = train_ranks(opts, a, comm.as_ref());
    abort_on_error(comm.as_ref(), result)
}

fn train_ranks(opts: &GpuOptions, a: TrainArgs, comm: &dyn Communicator) -> CliResult {
    let a = prepare_train_args(a)?;
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
    let shape = resolve::DataShape {
        channels: train_set.channels,
        height: train_set.height,
        width: train_set.width,
        classes: train_set.class_names.len(),
    };
    if let Some((_, _, file)) = &init {
        let given = (a.data.mean.is_some(), a.data.std.is_some());
        let flags = (a.data.interpolation, a.data.crop_pct);
        let (train, val) = (&mut train_set, &mut val_set);
        data::preprocess::use_folder_for_training(train, val, &file.metadata, given, flags);
    }
    let cfg = resolve::train_config(&a.model, init.as_ref().map(|i| &i.0), &shape)?;
    resolve::check_warmup(a.warmup, a.epochs, train_set.len, a.batch_size)?;
    if (train_set.height, train_set.width) != (cfg.image_h, cfg.image_w) {
        // Streamed folders are transformed to the model's size as they are decoded.
        if !a.quiet && train_set.stream.is_none() {
            eprintln!(
                "resizing {} images from {}x{} to {}x{}",
                train_set.name, train_set.height, train_set.width, cfg.image_h, cfg.image_w
            );
        }
        train_set = train_set.resized(cfg.image_h, cfg.image_w);
        val_set = val_set.resized(cfg.image_h, cfg.image_w);
    }
    let init = match init {
        Some((init_cfg, params, _)) => {
            if !init::keeps_head(&init_cfg, &cfg) {
                eprintln!(
                    "new {:?} head with {} classes (the checkpoint had {:?} with {}); body kept",
                    cfg.head, cfg.classes, init_cfg.head, init_cfg.classes
                );
            }
            Some(init::merge_init(&init_cfg, &params, &cfg, a.seed)?)
        }
        None => None,
    };
    let out = run_folder_path(&a);
    record_run(&a, &out, (&train_set, &val_set), comm.rank())?;
    let gpu = rank_gpu(opts, comm)?;
    let quiet = a.quiet || comm.rank() > 0;
    if !quiet {
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
    gpu.check_limits()?;
    let class_names = train_set.class_names.clone();
    let topts = train_options(&a, cfg, out, init, quiet);
    // curves.png covers the whole run, redrawn after every epoch.
    let mut draw_curves = |dir: &Path, epochs: &[train::EpochMetrics]| {
        crate::viz::curves::update_curves(&dir.join("curves.png"), epochs)
    };
    let (summary, trainer) = block_on(train::train_ranked(
        &gpu,
        &kernels,
        &topts,
        (Arc::new(train_set), Arc::new(val_set)),
        &mut draw_curves,
        comm,
    ))?;
    if let Some(dir) = &a.rank_weights {
        let path = dir.join(format!("rank-{}.safetensors", comm.rank()));
        checkpoint::save_model(&path, &topts.cfg, &block_on(trainer.params())?, &[])?;
    }
    if comm.rank() > 0 {
        return Ok(());
    }
    // Fine-tuned from a timm or transformers folder: also written back in its format.
    if let Some(src) = a.init.as_deref().filter(|p| model::hub::is_model_folder(p)) {
        let params = block_on(trainer.params())?;
        model::hub::export::after_training(src, &topts.out, &topts.cfg, &params, &class_names);
    }
    report_training(&a, &summary)
}

/// The flags a run trains with: a resumed run's own (`runs::resume_args`), the data's place
/// made absolute, `--init` resolved to a file, and a folder's validation split.
fn prepare_train_args(a: TrainArgs) -> Result<TrainArgs, Box<dyn std::error::Error>> {
    let mut a = runs::resume_args(a)?;
    a.data.data_dir = Some(runs::absolute(&data_dir(&a.data)));
    if let Some(init) = &a.init {
        a.init = Some(runs::absolute(&runs::model_source(init)?.path));
    }
    resolve_val_split(&mut a.data, Some(DEFAULT_VAL_SPLIT))?;
    Ok(a)
}

/// `--out`, else `runs/<preset>-<dataset>` (a resumed run's is its own folder).
fn run_folder_path(a: &TrainArgs) -> PathBuf {
    a.out.clone().unwrap_or_else(|| {
        PathBuf::from("runs")
            .join(format!("{:?}-{:?}", a.model.preset, a.data.dataset).to_lowercase())
    })
}

/// On rank 0: says how validation was chosen and writes run.json (the flags, the warmup
/// resolved) into the run folder, locking it meanwhile: a live run's record is never replaced.
fn record_run(
    a: &TrainArgs,
    out: &Path,
    (train, val): (&Dataset, &Dataset),
    rank: usize,
) -> CliResult {
    if rank > 0 {
        return Ok(());
    }
    let validation = match (a.data.dataset, a.data.val_split) {
        (DatasetKind::Folder, Some(fraction)) => format!(
            "{} images: {}% of each class of {} held out (--val-split; a fixed-seed choice, \
             the same for every run), training on the other {}",
            val.len,
            fraction * 100.0,
            folder_roots(&data_dir(&a.data)).0.display(),
            train.len
        ),
        _ => format!("{} images of {}", val.len, val.name),
    };
    eprintln!("validation: {validation}");
    let mut recorded = a.clone();
    let steps = (train.len / a.batch_size.max(1)) as u64 * a.epochs;
    recorded.warmup = Some(a.warmup.unwrap_or(steps / 20));
    let folder = train::run_folder::RunFolder::open(out, a.keep)?;
    folder.write_record(&runs::record(&recorded, &validation))?;
    Ok(())
}

/// The training loop's options from the flags, the resolved model and its starting weights.
fn train_options(
    a: &TrainArgs,
    cfg: crate::model::Config,
    out: PathBuf,
    init: Option<HostParams>,
    quiet: bool,
) -> TrainOptions {
    TrainOptions {
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
        progress: !quiet,
        freeze_body: a.freeze_body,
        betas: (a.beta1, a.beta2),
        save_every: a.save_every,
        keep: a.keep,
    }
}

/// After training (rank 0): the per-step losses when `--log-steps` asks, and the summary line.
fn report_training(a: &TrainArgs, summary: &train::RunSummary) -> CliResult {
    if let Some(path) = &a.log_steps {
        let lines: String = summary
            .step_losses
            .iter()
            .map(|(step, loss)| format!("{}\n", serde_json::json!({"step": step, "loss": loss})))
            .collect();
        checkpoint::write_atomic(path, lines.as_bytes())?;
    }
    println!(
        "done: {} steps, best validation accuracy {:.4}; checkpoints in {}",
        summary.steps,
        summary.best_accuracy,
        summary.out.display()
    );
    Ok(())
}

fn load_checkpoint(
    path: &Path,
    hints: &HintArgs,
) -> Result<(crate::model::Config, HostParams, checkpoint::TensorFile), TrainError> {
    Ok(checkpoint::load_any(path, &hints.hints())?)
}

fn eval_cmd(opts: &GpuOptions, mut a: EvalArgs) -> CliResult {
    let source = runs::model_source(&a.checkpoint)?;
    let (cfg, params, file) = load_checkpoint(&source.path, &a.hints)?;
    a.data = runs::eval_data(&a, source.run.as_ref(), &file.metadata)?;
    resolve_val_split(&mut a.data, None)?;
    let ds = limit(
        load_split(
            &a.data,
            false,
            Some((cfg.image_h, cfg.image_w, cfg.channels)),
        )?,
        a.data.limit_eval,
    );
    let mut ds = if ds.channels == cfg.channels {
        ds.resized(cfg.image_h, cfg.image_w)
    } else {
        ds
    };
    let flags = (a.data.interpolation, a.data.crop_pct);
    data::preprocess::use_folder_transform(&mut ds, &file.metadata, flags);
    // Evaluate as training prepared its inputs, unless --mean/--std say otherwise.
    let (mean, std) = checkpoint_norm(&file, ds.channels);
    if a.data.mean.is_none() {
        ds.mean = mean;
    }
    if a.data.std.is_none() {
        ds.std = std;
    }
    train::check_dataset(&cfg, &ds)?;
    let gpu = block_on(Gpu::new(opts))?;
    let kernels = Kernels::new(&gpu);
    gpu.check_limits()?;
    let batch = a.batch_size.min(ds.len.max(1));
    let model = Vit::new(&gpu, &kernels, &cfg, &params, batch, Mode::Infer, 0)?;
    gpu.check_limits()?;
    let r = block_on(train::evaluate(&gpu, &model, &Arc::new(ds.clone())))?;
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
    if r.confusion.len() > 30 {
        println!(
            "(confusion matrix of {} classes: see --json)",
            r.confusion.len()
        );
        return Ok(());
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

/// `--classes`, else the checkpoint's class names, else class indices.
fn class_names(
    classes: &Option<String>,
    cfg: &crate::model::Config,
    file: &checkpoint::TensorFile,
) -> Vec<String> {
    match classes {
        Some(s) => s.split(',').map(|v| v.trim().to_string()).collect(),
        None => file
            .metadata
            .get("class_names")
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or_else(|| (0..cfg.classes).map(|i| i.to_string()).collect()),
    }
}

/// One image's top-k classes, as a line of text or a JSON object.
fn print_prediction(path: &Path, logits: &[f32], names: &[String], top_k: usize, json: bool) {
    let probs = softmax(logits);
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&x, &y| probs[y].total_cmp(&probs[x]));
    let top: Vec<(String, f32)> = order
        .iter()
        .take(top_k.max(1))
        .map(|&k| {
            (
                names.get(k).cloned().unwrap_or_else(|| k.to_string()),
                probs[k],
            )
        })
        .collect();
    if json {
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

/// Inference over files and folders in full batches, decoded by the loader's threads with
/// the checkpoint's eval transform and normalisation; ends with a throughput summary.
fn infer_batched(opts: &GpuOptions, a: InferArgs) -> CliResult {
    if a.batch_size == 0 {
        return Err("--batch-size must be at least 1".into());
    }
    let (cfg, params, file) = load_checkpoint(&a.checkpoint, &a.hints)?;
    let names = class_names(&a.classes, &cfg, &file);
    let files = data::folder::expand_inputs(&a.images)?;
    let workers = a.workers.unwrap_or_else(data::stream::default_workers);
    // Checkpoints of streamed folders record timm's eval transform; others resize exactly.
    let interpolation = file
        .metadata
        .get("interpolation")
        .and_then(|s| s.parse().ok())
        .unwrap_or(data::transforms::Interpolation::Bilinear);
    let crop_pct = file.metadata.get("crop_pct").and_then(|s| s.parse().ok());
    let options = data::stream::StreamOptions {
        workers,
        queue_depth: 2 * workers.max(1),
        interpolation,
        crop_pct,
        hf_crop: data::preprocess::HfCrop::from_metadata(&file.metadata),
        ..Default::default()
    };
    let n = files.len();
    let mut ds = data::stream::dataset(
        "infer".into(),
        PathBuf::new(),
        &files,
        vec![0; n],
        names.clone(),
        (cfg.image_h, cfg.image_w, cfg.channels),
        options,
    );
    (ds.mean, ds.std) = checkpoint_norm(&file, cfg.channels);
    let gpu = block_on(Gpu::new(opts))?;
    let kernels = Kernels::new(&gpu);
    gpu.check_limits()?;
    let batch = a.batch_size.min(n.max(1));
    let model = Vit::new(&gpu, &kernels, &cfg, &params, batch, Mode::Infer, 0)?;
    gpu.check_limits()?;
    let per_image = cfg.channels * cfg.image_h * cfg.image_w;
    let t0 = Instant::now();
    let mut loader = data::Loader::new(Arc::new(ds), batch, false, None, 0, 0, false);
    let mut done = 0;
    for b in loader.by_ref() {
        let mut images = b.images;
        images.resize(batch * per_image, 0.0);
        model.write_batch(&gpu, &images, &vec![0u32; batch]);
        let logits = forward_logits(&gpu, &model)?;
        for (i, path) in files[done..done + b.len].iter().enumerate() {
            let row = &logits[i * cfg.classes..(i + 1) * cfg.classes];
            print_prediction(path, row, &names, a.top_k, a.json);
        }
        done += b.len;
    }
    loader.finish()?;
    let seconds = t0.elapsed().as_secs_f64();
    let summary = serde_json::json!({"summary": {
        "images": done, "seconds": seconds, "images_per_second": done as f64 / seconds,
        "batch_size": batch, "workers": workers,
    }});
    match a.json {
        true => println!("{summary}"),
        false => eprintln!(
            "{done} images in {seconds:.2}s: {:.1} images/s (batch {batch}, {workers} workers)",
            done as f64 / seconds
        ),
    }
    Ok(())
}

fn infer_cmd(opts: &GpuOptions, mut a: InferArgs) -> CliResult {
    a.checkpoint = runs::model_source(&a.checkpoint)?.path;
    if a.attention.is_none() {
        return infer_batched(opts, a);
    }
    let (cfg, params, file) = load_checkpoint(&a.checkpoint, &a.hints)?;
    let names = class_names(&a.classes, &cfg, &file);
    let paths = data::folder::expand_inputs(&a.images)?;
    // Decode everything first: a bad file is reported before any work is done.
    let mut images = Vec::with_capacity(paths.len());
    for path in &paths {
        images.push(data::folder::load_image(
            path,
            cfg.image_h,
            cfg.image_w,
            cfg.channels,
        )?);
    }
    let gpu = block_on(Gpu::new(opts))?;
    let kernels = Kernels::new(&gpu);
    gpu.check_limits()?;
    let batch = images.len().min(64);
    let model = Vit::new(&gpu, &kernels, &cfg, &params, batch, Mode::Infer, 0)?;
    gpu.check_limits()?;
    let per_image = cfg.channels * cfg.image_h * cfg.image_w;
    // The checkpoint records the normalisation it was trained with (default: 0.5, 0.5).
    let (mean, std) = checkpoint_norm(&file, cfg.channels);
    for (chunk_paths, chunk) in paths.chunks(batch).zip(images.chunks(batch)) {
        let mut input = vec![0f32; batch * per_image];
        for (i, img) in chunk.iter().enumerate() {
            for (j, &v) in img.iter().enumerate() {
                let c = j / (cfg.image_h * cfg.image_w);
                input[i * per_image + j] = (v as f32 / 255.0 - mean[c]) / std[c];
            }
        }
        model.write_batch(&gpu, &input, &vec![0u32; batch]);
        let logits = forward_logits(&gpu, &model)?;
        if let Some(dir) = &a.attention {
            let maps = block_on(model.attention_maps(&gpu, &kernels))?;
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
            let row = &logits[i * cfg.classes..(i + 1) * cfg.classes];
            print_prediction(path, row, &names, a.top_k, a.json);
        }
    }
    Ok(())
}

/// Loader throughput: one epoch (or `--data-batches`) of a streamed folder with timm's
/// training transforms at the model's input size. Returns (images/s, images, workers).
fn bench_loader(
    a: &BenchArgs,
    cfg: &crate::model::Config,
) -> Result<(f64, usize, usize), Box<dyn std::error::Error>> {
    let dir = a
        .data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("data/images"));
    let workers = a.workers.unwrap_or_else(data::stream::default_workers);
    let options = data::stream::StreamOptions {
        workers,
        queue_depth: 2 * workers.max(1),
        ..Default::default()
    };
    let root = folder_roots(&dir).0;
    let ds = data::folder::stream(&root, cfg.image_h, cfg.image_w, cfg.channels, options)?;
    let augment = Some(data::Augment::standard());
    let t0 = Instant::now();
    let mut loader = data::Loader::new(Arc::new(ds), a.batch_size, true, augment, 0, 0, true);
    let batches = a.data_batches.unwrap_or(usize::MAX);
    let images: usize = loader.by_ref().take(batches).map(|b| b.len).sum();
    loader.finish()?;
    Ok((images as f64 / t0.elapsed().as_secs_f64(), images, workers))
}

/// Whole steps on one random batch (this rank's slice): the sorted times of the timed ones.
/// Under several ranks a training step includes the gradient all-reduce (`exchange`, whose
/// counters restart after the warm-up).
fn time_steps(
    gpu: &Gpu,
    model: &Vit,
    a: &BenchArgs,
    mut exchange: Option<&mut crate::train::exchange::GradExchange>,
    comm: &dyn Communicator,
) -> Result<Vec<f64>, Box<dyn std::error::Error>> {
    let (cfg, local, mode) = (&model.cfg, model.batch, model.mode);
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(1 + comm.rank() as u64);
    let images = crate::reference::random_vec(
        &mut rng,
        local * cfg.channels * cfg.image_h * cfg.image_w,
        1.0,
    );
    let labels: Vec<u32> = (0..local).map(|i| (i % cfg.classes) as u32).collect();
    model.write_batch(gpu, &images, &labels);
    let optim = crate::model::OptimConfig::default();
    let mut times = Vec::new();
    for i in 0..a.warmup_steps + a.steps {
        model.write_step(gpu, i as u64 + 1, 1e-4, &optim);
        if i == a.warmup_steps {
            if let Some(x) = &mut exchange {
                (x.reduce_seconds, x.wait_seconds, x.steps) = (0.0, 0.0, 0);
                x.separate_wait = true;
            }
        }
        let t0 = Instant::now();
        if let Some(x) = &mut exchange {
            block_on(x.step(gpu, model, comm))?;
        } else {
            let mut encoder = gpu.device.create_command_encoder(&Default::default());
            match mode {
                Mode::Train => model.record_train_step(&mut encoder),
                Mode::Infer => model.record_forward(&mut encoder),
            }
            gpu.queue.submit([encoder.finish()]);
        }
        block_on(gpu.idle("bench step"))?;
        if i >= a.warmup_steps {
            times.push(t0.elapsed().as_secs_f64());
        }
    }
    times.sort_by(f64::total_cmp);
    Ok(times)
}

/// The benchmark's model: this rank's shard of the global batch `b`.
fn bench_model(
    gpu: &Gpu,
    kernels: &Kernels,
    cfg: &crate::model::Config,
    (b, mode): (usize, Mode),
    comm: &dyn Communicator,
) -> Result<Vit, Box<dyn std::error::Error>> {
    let ranks = comm.size();
    if !b.is_multiple_of(ranks) {
        return Err(resolve::UsageError::Combination(format!(
            "--batch-size {b} (the global batch) must be a multiple of the {ranks} ranks"
        ))
        .into());
    }
    let local = b / ranks;
    let params = HostParams::init(cfg, 0);
    let mut model = Vit::new(gpu, kernels, cfg, &params, local, mode, 0)?;
    gpu.check_limits()?;
    if ranks > 1 {
        model.set_shard(gpu, kernels, comm.rank() * local, b);
    }
    Ok(model)
}

fn bench_cmd(opts: &GpuOptions, a: BenchArgs) -> CliResult {
    let comm = crate::dist::init()?;
    let result = bench_ranks(opts, a, comm.as_ref());
    abort_on_error(comm.as_ref(), result)
}

/// Under mpirun, `--batch-size` is the global batch split over the ranks, a training step
/// includes the gradient all-reduce, and rank 0 reports.
fn bench_ranks(opts: &GpuOptions, a: BenchArgs, comm: &dyn Communicator) -> CliResult {
    let cfg = a.model.config(None, None);
    cfg.validate().map_err(|e| {
        resolve::UsageError::Combination(format!("the model flags give no valid model: {e}"))
    })?;
    let loader = match a.data {
        Some(BenchData::Folder) => Some(bench_loader(&a, &cfg)?),
        None => None,
    };
    if let (Some((ips, n, workers)), false) = (loader, a.json) {
        println!(
            "loader: {ips:.1} images/s decoded and augmented ({n} images, {}x{}, {workers} workers)",
            cfg.image_h, cfg.image_w
        );
    }
    if a.steps == 0 {
        // `--steps 0` with `--data folder`: the loader alone.
        if let (Some((ips, n, workers)), true) = (loader, a.json) {
            let j = serde_json::json!({"loader_images_per_second": ips, "images": n, "loader_workers": workers});
            println!("{j}");
        }
        return Ok(());
    }
    let gpu = rank_gpu(opts, comm)?;
    let kernels = Kernels::new(&gpu);
    gpu.check_limits()?;
    let mode = match a.mode {
        BenchMode::Train => Mode::Train,
        BenchMode::Infer => Mode::Infer,
    };
    let (b, ranks) = (a.batch_size, comm.size());
    let model = bench_model(&gpu, &kernels, &cfg, (b, mode), comm)?;
    let mut exchange = (ranks > 1 && mode == Mode::Train)
        .then(|| crate::train::exchange::GradExchange::new(&gpu, &model));
    let timer = crate::gpu::PassTimer::new(&gpu);
    let ceiling_before = block_on(crate::kernels::peak::measure_fma_ceiling(
        &gpu,
        timer.as_ref(),
        256,
    ))?;
    let times = time_steps(&gpu, &model, &a, exchange.as_mut(), comm)?;
    // Per timed step: the all-reduce's seconds, the floats it sums, the wait for the slowest
    // rank before it (seconds).
    let reduce = exchange.as_ref().map(|x| {
        let n = x.steps.max(1) as f64;
        (
            x.reduce_seconds / n,
            model.trainable().len(),
            x.wait_seconds / n,
        )
    });
    // The ceiling right before and right after the steps, so both see the same machine
    // load; the larger of the two, so a slow moment cannot flatter the ratio.
    let ceiling_after = block_on(crate::kernels::peak::measure_fma_ceiling(
        &gpu,
        timer.as_ref(),
        256,
    ))?;
    let ceiling = ceiling_before.max(ceiling_after);
    let (families, launches) = match a.profile {
        true => profile_step(&gpu, &model, mode)?,
        false => Default::default(),
    };
    let median = times[times.len() / 2];
    let flops_per_image = match mode {
        Mode::Train => 3.0,
        Mode::Infer => 1.0,
    } * forward_matmul_flops_per_image(&cfg);
    if comm.rank() > 0 {
        return Ok(());
    }
    let report = BenchReport {
        a: &a,
        gpu: &gpu,
        kernels: &kernels,
        dispatches: model.dispatches_per_step(mode),
        ranks,
        loader,
        reduce,
        profile: (families, launches),
        median,
        ceiling,
        flops_per_image,
    };
    match a.json {
        true => report.print_json(),
        false => report.print_text(),
    }
    Ok(())
}

/// What one `bench` run measured, printed as one JSON line or as text.
struct BenchReport<'a> {
    a: &'a BenchArgs,
    gpu: &'a Gpu,
    kernels: &'a Kernels,
    dispatches: usize,
    ranks: usize,
    /// images/s, images, workers of the loader when `--data` was given.
    loader: Option<(f64, usize, usize)>,
    /// Per timed step: the all-reduce's seconds, the floats it sums, the wait for the
    /// slowest rank before it.
    reduce: Option<(f64, usize, f64)>,
    profile: Profile,
    median: f64,
    ceiling: f64,
    flops_per_image: f64,
}

impl BenchReport<'_> {
    fn images_per_second(&self) -> f64 {
        self.a.batch_size as f64 / self.median
    }

    fn model_gflops(&self) -> f64 {
        self.flops_per_image * self.images_per_second() * 1e-9
    }

    /// The model's name (the `--arch` given, else the preset) and the mode.
    fn names(&self) -> (String, String) {
        let mode = format!("{:?}", self.a.mode).to_lowercase();
        let model = match &self.a.model.arch {
            Some(arch) => arch.clone(),
            None => format!("{:?}", self.a.model.preset).to_lowercase(),
        };
        (model, mode)
    }

    fn print_json(&self) {
        let (preset, mode_name) = self.names();
        let (median, reduce, loader) = (self.median, self.reduce, self.loader);
        let (gpu, kernels) = (self.gpu, self.kernels);
        let model_gflops = self.model_gflops();
        println!(
            "{}",
            serde_json::json!({
                "preset": preset, "mode": mode_name, "batch_size": self.a.batch_size,
                "images_per_second": self.images_per_second(),
                "median_step_seconds": median, "steps": self.a.steps, "adapter": gpu.info.name,
                "profile_seconds": self.profile.0,
                "dispatches_per_step": self.dispatches,
                "loader_images_per_second": loader.map(|l| l.0), "loader_workers": loader.map(|l| l.2),
                "model_gflop_per_image": self.flops_per_image * 1e-9, "model_gflops": model_gflops,
                "ceiling_gflops": self.ceiling * 1e-9, "of_ceiling": model_gflops / (self.ceiling * 1e-9),
                "gemm_variant": kernels.gemm.variant().name(),
                "gemm_reason": kernels.gemm.reason(),
                "attention_variant": kernels.attention.variant().name(),
                "attention_reason": kernels.attention.reason(),
                "ranks": self.ranks,
                "allreduce_seconds_per_step": reduce.map(|r| r.0),
                "allreduce_share": reduce.map(|r| r.0 / median),
                "allreduce_bytes": reduce.map(|r| 4 * r.1),
                "rank_wait_seconds_per_step": reduce.map(|r| r.2),
            })
        );
    }

    fn print_text(&self) {
        let (preset, mode_name) = self.names();
        let (b, median, ips, ranks) = (
            self.a.batch_size,
            self.median,
            self.images_per_second(),
            self.ranks,
        );
        println!(
            "{preset} {mode_name} batch {b}: {ips:.1} images/s, median step {:.1} ms over {} steps on {}",
            median * 1e3,
            self.a.steps,
            self.gpu.info.name
        );
        if let Some((seconds, floats, wait)) = self.reduce {
            println!(
                "{ranks} ranks: all-reduce of {:.1} MB {:.1} ms per step ({:.1}% of a step), \
                 after {:.1} ms waiting for the slowest rank",
                4.0 * floats as f64 / 1e6,
                seconds * 1e3,
                100.0 * seconds / median,
                wait * 1e3
            );
        }
        if let Some((lips, _, _)) = self.loader {
            let bound = if lips < ips {
                "the loader"
            } else {
                "the model"
            };
            println!("{bound} bounds training here (loader {lips:.1} vs model {ips:.1} images/s)");
        }
        let model_gflops = self.model_gflops();
        println!(
            "model {model_gflops:.1} GFLOP/s ({:.3} GFLOP per image), {:.2} of the in-run FMA ceiling {:.1} GFLOP/s",
            self.flops_per_image * 1e-9,
            model_gflops / (self.ceiling * 1e-9),
            self.ceiling * 1e-9
        );
        print!("{}", variant_lines(self.gpu));
        self.print_profile();
    }

    fn print_profile(&self) {
        let (families, launches) = &self.profile;
        let total: f64 = families.values().sum();
        if total <= 0.0 {
            return;
        }
        let how = if self
            .gpu
            .features
            .contains(wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS)
        {
            "every command timed in place in one run of the step"
        } else {
            "each launch timed alone"
        };
        println!("per kernel family ({how}; sum {:.1} ms):", total * 1e3);
        let mut rows: Vec<_> = families.iter().collect();
        rows.sort_by(|x, y| y.1.total_cmp(x.1));
        for (family, s) in rows {
            println!(
                "  {family:<18} {:>8.2} ms  {:>5.1}%",
                s * 1e3,
                100.0 * s / total
            );
        }
        // The same shape of launch recurs once per block: grouped, the largest first.
        println!("largest launches (family, what, launches per step, ms):");
        let mut rows: Vec<_> = launches.iter().collect();
        rows.sort_by(|x, y| y.1 .1.total_cmp(&x.1 .1));
        for ((family, what), (count, s)) in rows.into_iter().take(12) {
            println!(
                "  {family:<20} {what:<24} {count:>4} x {:>7.2} = {:>8.2} ms  {:>5.1}%",
                s * 1e3 / *count as f64,
                s * 1e3,
                100.0 * s / total
            );
        }
    }
}

/// Matmul FLOPs of one image's forward pass, counted analytically (2 per multiply-add):
/// patch embedding 2·P·(C·p²)·D for P patches; per layer, with N tokens, QKV 2·N·D·3D,
/// scores QKᵀ 2·N²·D and probabilities × V 2·N²·D (over all heads), projection 2·N·D²,
/// MLP 2·N·D·F twice; the head 2·D·K (linear) or 2·D·H + 2·H·K (MLP head, hidden H).
/// Elementwise work (LayerNorm, softmax, GELU, AdamW) is not counted. A training step counts
/// 3× (forward, then backward's two GEMMs per forward one), inference 1×;
/// scripts/bench_pytorch.py counts the same.
pub fn forward_matmul_flops_per_image(cfg: &crate::model::Config) -> f64 {
    let (n, d, f) = (cfg.tokens() as f64, cfg.dim as f64, cfg.mlp_hidden as f64);
    let embed = 2.0 * cfg.patches() as f64 * cfg.patch_len() as f64 * d;
    let layer = 2.0 * n * d * 3.0 * d + 4.0 * n * n * d + 2.0 * n * d * d + 4.0 * n * d * f;
    let k = cfg.classes as f64;
    let head = match cfg.head {
        crate::model::Head::Linear => 2.0 * d * k,
        crate::model::Head::Mlp { hidden } => 2.0 * d * hidden as f64 + 2.0 * hidden as f64 * k,
    };
    embed + cfg.depth as f64 * layer + head
}

fn verify_cmd(opts: &GpuOptions, a: VerifyArgs) -> CliResult {
    let gpu = block_on(Gpu::new(opts))?;
    print!("{}", variant_lines(&gpu));
    let tol = crate::verify::Tolerances {
        logits: a.logits_tol,
        loss: a.loss_tol,
        grads: a.grad_tol,
        trajectory: a.trajectory_tol,
    };
    let mut failed = Vec::new();
    for path in &a.files {
        let report = block_on(crate::verify::verify(&gpu, path, tol))?;
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
        // One-step fixtures: the gradients; trajectory fixtures: losses and final weights.
        let worst = report
            .comparisons
            .iter()
            .filter(|c| c.name.starts_with("grad ") || c.name.starts_with("final "))
            .map(|c| c.relative_error)
            .fold(0.0, f64::max);
        let kind = if report
            .comparisons
            .iter()
            .any(|c| c.name.starts_with("final "))
        {
            "final parameter"
        } else {
            "gradient"
        };
        println!(
            "  largest {kind} error {worst:.3e}: {}",
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

/// The logits of one forward pass over the batch already written (record, submit, read).
fn forward_logits(gpu: &Gpu, model: &Vit) -> Result<Vec<f32>, crate::gpu::GpuError> {
    let read =
        block_on(gpu.record_and_read(|e| model.record_forward(e), &[(&model.logits).into()]))?;
    Ok(read.into_iter().next().unwrap_or_default())
}

/// Seconds per kernel family and per (family, launch) with its launch count, for
/// `bench --profile`: every command of one step timed (see `profile_commands`).
type Profile = (
    std::collections::BTreeMap<&'static str, f64>,
    std::collections::BTreeMap<(&'static str, String), (u64, f64)>,
);

fn profile_step(gpu: &Gpu, model: &Vit, mode: Mode) -> Result<Profile, crate::gpu::GpuError> {
    let (mut families, mut launches) = Profile::default();
    if !gpu
        .features
        .contains(wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS)
    {
        eprintln!(
            "note: no timestamps inside encoders on this device ({} limits): each launch is timed alone in its own pass",
            gpu.mode.name()
        );
    }
    for list in model.step_commands(mode) {
        for l in block_on(crate::gpu::profile_commands(gpu, list))? {
            *families.entry(l.family).or_insert(0.0) += l.seconds;
            let e = launches.entry((l.family, l.what)).or_insert((0, 0.0));
            *e = (e.0 + 1, e.1 + l.seconds);
        }
    }
    Ok((families, launches))
}
