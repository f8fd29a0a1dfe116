//! Run folders as inputs. `train` records its flags in the folder's run.json (the data's
//! absolute path and the resolved --warmup and --val-split among them); `train --resume DIR`
//! takes every flag from there, and `eval`/`infer` given the folder (or a checkpoint in it)
//! use its best model and, for `eval`, its data. Which flags were typed is known ([`Given`]),
//! so a typed flag that contradicts the run is reported before any work.

use super::resolve::UsageError;
use super::{Cli, Command, DataArgs, DatasetKind, EvalArgs, ModelArgs, TrainArgs};
use crate::model::checkpoint;
use crate::train::run_folder;
use clap::parser::ValueSource;
use clap::{Parser, ValueEnum};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

type BoxError = Box<dyn std::error::Error>;

/// The flags typed on the command line (by long name), read from clap's matches: the
/// struct is flattened into a subcommand's arguments and sees all of their matches.
#[derive(Debug, Clone, Default)]
pub struct Given(pub BTreeSet<String>);

impl Given {
    pub fn has(&self, flag: &str) -> bool {
        self.0.contains(flag)
    }
}

impl clap::FromArgMatches for Given {
    fn from_arg_matches(m: &clap::ArgMatches) -> Result<Self, clap::Error> {
        let typed = m
            .ids()
            .map(|id| id.as_str())
            .filter(|id| m.value_source(id) == Some(ValueSource::CommandLine));
        Ok(Given(typed.map(|id| id.replace('_', "-")).collect()))
    }

    fn update_from_arg_matches(&mut self, m: &clap::ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

impl clap::Args for Given {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        cmd
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        cmd
    }
}

/// Flags by long name with their values as typed; switches as "true" when set.
pub type Flags = BTreeMap<String, String>;

const SWITCHES: [&str; 4] = ["in-memory", "constant-lr", "freeze-body", "no-augment"];

/// May differ on `--resume`: they lengthen the run, say where its data now is, or how often
/// it saves; they do not change what a step computes.
pub const MAY_CHANGE: [&str; 5] = ["epochs", "data-dir", "save-every", "keep", "workers"];

/// One invocation's own: neither recorded nor compared.
const THIS_RUN_ONLY: [&str; 6] = [
    "resume",
    "out",
    "max-steps",
    "quiet",
    "log-steps",
    "rank-weights",
];

/// The flags `eval` shares with `train`: a run's data.
const DATA_FLAGS: [&str; 10] = [
    "dataset",
    "data-dir",
    "limit-eval",
    "workers",
    "in-memory",
    "interpolation",
    "crop-pct",
    "mean",
    "std",
    "val-split",
];

fn name<T: ValueEnum>(v: &T) -> String {
    v.to_possible_value()
        .map(|p| p.get_name().to_string())
        .unwrap_or_default()
}

fn put(flags: &mut Flags, flag: &str, value: Option<String>) {
    if let Some(v) = value {
        flags.insert(flag.to_string(), v);
    }
}

fn text<T: ToString>(v: Option<T>) -> Option<String> {
    v.map(|v| v.to_string())
}

fn switch(flags: &mut Flags, flag: &str, on: bool) {
    put(flags, flag, on.then(|| "true".to_string()));
}

fn path_text(p: &Option<PathBuf>) -> Option<String> {
    p.as_ref().map(|p| p.display().to_string())
}

fn model_flags(m: &ModelArgs, f: &mut Flags) {
    put(f, "preset", Some(name(&m.preset)));
    put(f, "arch", m.arch.clone());
    put(
        f,
        "image-size",
        m.image_size.map(|(h, w)| format!("{h}x{w}")),
    );
    put(f, "patch", text(m.patch));
    put(f, "dim", text(m.dim));
    put(f, "depth", text(m.depth));
    put(f, "heads", text(m.heads));
    put(f, "mlp-hidden", text(m.mlp_hidden));
    put(f, "act", m.act.as_ref().map(name));
    put(f, "head", m.head.as_ref().map(name));
    put(f, "head-hidden", text(m.head_hidden));
    put(f, "dropout", text(m.dropout));
    put(f, "ln-eps", text(m.ln_eps));
    put(f, "classes", text(m.classes));
}

fn data_flags(d: &DataArgs, f: &mut Flags) {
    put(f, "dataset", Some(name(&d.dataset)));
    put(f, "data-dir", path_text(&d.data_dir));
    put(f, "limit-eval", text(d.limit_eval));
    put(f, "workers", text(d.workers));
    switch(f, "in-memory", d.in_memory);
    put(f, "interpolation", Some(d.interpolation.to_string()));
    put(f, "crop-pct", Some(d.crop_pct.to_string()));
    put(f, "mean", d.mean.clone());
    put(f, "std", d.std.clone());
    put(f, "val-split", text(d.val_split));
}

/// Every flag of `a` a run records (all but [`THIS_RUN_ONLY`]).
pub fn train_flags(a: &TrainArgs) -> Flags {
    let mut f = Flags::new();
    model_flags(&a.model, &mut f);
    data_flags(&a.data, &mut f);
    put(&mut f, "epochs", Some(a.epochs.to_string()));
    put(&mut f, "batch-size", Some(a.batch_size.to_string()));
    put(&mut f, "lr", Some(a.lr.to_string()));
    put(&mut f, "weight-decay", Some(a.weight_decay.to_string()));
    put(&mut f, "warmup", text(a.warmup));
    switch(&mut f, "constant-lr", a.constant_lr);
    put(&mut f, "clip", Some(a.clip.to_string()));
    put(&mut f, "beta1", Some(a.beta1.to_string()));
    put(&mut f, "beta2", Some(a.beta2.to_string()));
    put(&mut f, "save-every", text(a.save_every));
    put(&mut f, "keep", Some(a.keep.to_string()));
    put(&mut f, "seed", Some(a.seed.to_string()));
    put(&mut f, "init", path_text(&a.init));
    switch(&mut f, "freeze-body", a.freeze_body);
    put(&mut f, "limit-train", text(a.limit_train));
    switch(&mut f, "no-augment", a.no_augment);
    f
}

/// The command-line words that give back `flags`.
fn argv(flags: &Flags) -> Vec<String> {
    flags
        .iter()
        .map(|(flag, value)| match SWITCHES.contains(&flag.as_str()) {
            true => format!("--{flag}"),
            false => format!("--{flag}={value}"),
        })
        .collect()
}

/// `vit-wgpu <words>` parsed; `source` (the run.json) names the origin in an error.
fn parse(words: Vec<String>, source: &Path) -> Result<Command, UsageError> {
    let all = ["vit-wgpu".to_string()].into_iter().chain(words);
    Cli::try_parse_from(all)
        .map(|cli| cli.command)
        .map_err(|e| {
            let first = e.to_string();
            let first = first.lines().next().unwrap_or_default().to_string();
            UsageError::Combination(format!(
                "{}: its flags do not parse ({first}); fix or delete the file",
                source.display()
            ))
        })
}

/// run.json for a run started (or resumed) with `a` (data path absolute, warmup and
/// validation split resolved); `validation` says how its validation set was chosen.
pub fn record(a: &TrainArgs, validation: &str) -> serde_json::Value {
    serde_json::json!({
        "vit-wgpu": env!("CARGO_PKG_VERSION"),
        "flags": train_flags(a),
        "validation": validation,
    })
}

fn recorded_flags(dir: &Path, record: &serde_json::Value) -> Result<Flags, UsageError> {
    let bad = || {
        UsageError::Combination(format!(
            "{}: expected \"flags\": an object of flag names and string values",
            dir.join(run_folder::RECORD).display()
        ))
    };
    let object = record
        .get("flags")
        .and_then(|f| f.as_object())
        .ok_or_else(bad)?;
    object
        .iter()
        .map(|(k, v)| Ok((k.clone(), v.as_str().ok_or_else(bad)?.to_string())))
        .collect()
}

/// The path made absolute: canonical when it exists, else joined to the current directory.
pub fn absolute(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| match std::env::current_dir() {
        Ok(d) => d.join(p),
        Err(_) => p.to_path_buf(),
    })
}

/// The run folder of `--resume`/`--checkpoint` PATH: PATH itself or the file's folder.
pub fn run_dir(p: &Path) -> PathBuf {
    if p.is_dir() {
        return p.to_path_buf();
    }
    p.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf()
}

fn same_value(flag: &str, now: Option<&String>, was: Option<&String>) -> bool {
    match (now, was) {
        (Some(a), Some(b)) if flag == "data-dir" || flag == "init" => {
            absolute(Path::new(a)) == absolute(Path::new(b))
        }
        (a, b) => a == b,
    }
}

fn show(v: Option<&String>) -> String {
    match v {
        Some(v) => v.clone(),
        None => "(not set)".into(),
    }
}

/// `train --resume`: the run's own flags from its run.json, with the ones this command line
/// may change applied; the continued run is written to the run's folder. Flags given with
/// other values than the run's are one usage error naming each flag and both values.
pub fn resume_args(a: TrainArgs) -> Result<TrainArgs, BoxError> {
    let Some(resume) = a.resume.clone() else {
        return Ok(a);
    };
    if !resume.exists() {
        return Err(UsageError::Flag {
            flag: "resume",
            value: resume.display().to_string(),
            allowed: "no such run folder or checkpoint".into(),
        }
        .into());
    }
    let dir = run_dir(&resume);
    if let Some(out) = a.out.as_ref().filter(|o| absolute(o) != absolute(&dir)) {
        return Err(UsageError::Combination(format!(
            "--out {}: a resumed run continues in its own folder {}; to start another run \
             from its weights use --init {} --out {}",
            out.display(),
            dir.display(),
            dir.join(run_folder::LAST).display(),
            out.display()
        ))
        .into());
    }
    let mut args = match run_folder::read_record(&dir)? {
        Some(record) => recorded_resume(&a, &dir, &recorded_flags(&dir, &record)?)?,
        None => unrecorded_resume(a, &dir)?,
    };
    args.out = Some(dir);
    Ok(args)
}

/// The run's flags, with the typed ones of [`MAY_CHANGE`] applied (noted) and any other
/// typed flag required to agree.
fn recorded_resume(a: &TrainArgs, dir: &Path, run: &Flags) -> Result<TrainArgs, UsageError> {
    let typed = train_flags(a);
    let mut merged = run.clone();
    let (mut conflicts, mut notes) = (Vec::new(), Vec::new());
    for flag in a.given.0.iter() {
        let (now, was) = (typed.get(flag), run.get(flag));
        if THIS_RUN_ONLY.contains(&flag.as_str()) || same_value(flag, now, was) {
            continue;
        }
        if !MAY_CHANGE.contains(&flag.as_str()) {
            conflicts.push(format!(
                "  --{flag}: the run's {}, given {}",
                show(was),
                show(now)
            ));
            continue;
        }
        let schedule = match flag == "epochs" && !run.contains_key("constant-lr") {
            true => "; the cosine schedule is stretched to the new length from here on",
            false => "",
        };
        notes.push(format!(
            "note: --{flag} {} (the run's: {}){schedule}",
            show(now),
            show(was)
        ));
        match now {
            Some(v) => merged.insert(flag.clone(), v.clone()),
            None => merged.remove(flag),
        };
    }
    if !conflicts.is_empty() {
        return Err(UsageError::Combination(format!(
            "{} was started with other flags than given (see its run.json):\n{}\nA resumed \
             run keeps its flags: only --{} (and this invocation's --max-steps, --quiet, \
             --log-steps) may change. To train on with other flags, start a new run from its \
             weights: --init {} --out NEW_FOLDER",
            dir.display(),
            conflicts.join("\n"),
            MAY_CHANGE.join(", --"),
            dir.join(run_folder::LAST).display()
        )));
    }
    for note in notes {
        eprintln!("{note}");
    }
    check_data_dir(dir, &merged, a.given.has("data-dir"))?;
    let mut words = vec!["train".to_string()];
    words.extend(argv(&merged));
    let Command::Train(mut args) = parse(words, &dir.join(run_folder::RECORD))? else {
        unreachable!("parsed a train command line");
    };
    args.resume = a.resume.clone();
    args.max_steps = a.max_steps;
    args.quiet = a.quiet;
    args.log_steps = a.log_steps.clone();
    args.rank_weights = a.rank_weights.clone();
    args.given = a.given.clone();
    Ok(args)
}

/// The run's data must still be where run.json says (CIFAR-10 is downloaded again).
fn check_data_dir(dir: &Path, flags: &Flags, typed: bool) -> Result<(), UsageError> {
    let (Some(data), false) = (flags.get("data-dir"), typed) else {
        return Ok(());
    };
    let cifar = flags.get("dataset").is_none_or(|d| d == "cifar10");
    if Path::new(data).exists() || cifar {
        return Ok(());
    }
    Err(UsageError::Combination(format!(
        "the run's data was in {data} ({}), which no longer exists: pass --data-dir with its \
         new place",
        dir.join(run_folder::RECORD).display()
    )))
}

/// A run folder without run.json (made before runs recorded their flags): resumed with the
/// flags given, which must then name at least the data; else an error saying what to pass.
fn unrecorded_resume(a: TrainArgs, dir: &Path) -> Result<TrainArgs, UsageError> {
    if a.given.has("dataset") || a.given.has("data-dir") {
        eprintln!(
            "note: {} has no run.json (an older run folder): resuming with the flags given, \
             which must be the run's; run.json is written now",
            dir.display()
        );
        return Ok(a);
    }
    let last = dir.join(run_folder::LAST);
    let (dataset, model) = match checkpoint::load_model(&last) {
        Ok((cfg, _, file)) => {
            let name = file.metadata.get("dataset").cloned().unwrap_or_default();
            (
                dataset_flag(&name),
                format!(" (the checkpoint's model: {cfg})"),
            )
        }
        Err(_) => ("--dataset <its dataset>".to_string(), String::new()),
    };
    Err(UsageError::Combination(format!(
        "{} has no run.json (it was made before vit-wgpu recorded a run's flags), so its data \
         and training flags are unknown. Resume it with the flags it was started with: \
         {dataset} --data-dir <its data>, the model flags{model} and --epochs, --batch-size, \
         --lr, --seed and any other training flag it had. The resumed run writes run.json, so \
         later resumes need only --resume.",
        dir.display()
    )))
}

/// The `--dataset` flag for a checkpoint's recorded dataset name.
fn dataset_flag(recorded: &str) -> String {
    match DatasetKind::from_str(recorded, true) {
        Ok(kind) => format!("--dataset {}", name(&kind)),
        Err(_) => format!("--dataset folder (its images were in a folder '{recorded}')"),
    }
}

/// What `--checkpoint` names: the file (or model folder) to load and, when it belongs to a
/// run folder with a run.json, the run's flags.
pub struct ModelSource {
    pub path: PathBuf,
    pub run: Option<Flags>,
}

/// `--checkpoint PATH` (and `--init`): a run folder means its best.safetensors (else its
/// last.safetensors); a model folder (config.json) and files are taken as they are.
pub fn model_source(path: &Path) -> Result<ModelSource, BoxError> {
    if !path.is_dir() {
        let dir = run_dir(path);
        let run = match run_folder::read_record(&dir)? {
            Some(r) => Some(recorded_flags(&dir, &r)?),
            None => None,
        };
        return Ok(ModelSource {
            path: path.to_path_buf(),
            run,
        });
    }
    let record = run_folder::read_record(path)?;
    let candidates = [run_folder::BEST, run_folder::LAST].map(|f| path.join(f));
    let file = candidates.iter().find(|p| p.is_file());
    if record.is_none() && file.is_none() {
        if crate::model::hub::is_model_folder(path) {
            return Ok(ModelSource {
                path: path.to_path_buf(),
                run: None,
            });
        }
        return Err(format!(
            "{} is a folder, but neither a run folder (best.safetensors or last.safetensors, \
             as `train` writes) nor a model folder (config.json and model.safetensors)",
            path.display()
        )
        .into());
    }
    let Some(file) = file else {
        return Err(format!(
            "{}: a run folder with no checkpoint yet (expected {} or {})",
            path.display(),
            run_folder::BEST,
            run_folder::LAST
        )
        .into());
    };
    eprintln!("using {}", file.display());
    let run = match record {
        Some(r) => Some(recorded_flags(path, &r)?),
        None => None,
    };
    Ok(ModelSource {
        path: file.clone(),
        run,
    })
}

/// `eval`'s data: the run's data flags (dataset, its place, the validation split, the
/// transforms; not --limit-eval), each replaced by a data flag given here and noted when it
/// differs. Without a run.json: the flags given, else the dataset the checkpoint names.
pub fn eval_data(
    a: &EvalArgs,
    run: Option<&Flags>,
    meta: &HashMap<String, String>,
) -> Result<DataArgs, UsageError> {
    let Some(run) = run else {
        return unrecorded_eval_data(a, meta);
    };
    let mut typed = Flags::new();
    data_flags(&a.data, &mut typed);
    let mut merged: Flags = run
        .iter()
        .filter(|(k, _)| DATA_FLAGS.contains(&k.as_str()) && *k != "limit-eval")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    // Other data than the run's: its own split, unless --val-split says otherwise.
    let other_data = ["data-dir", "dataset"]
        .iter()
        .any(|f| a.given.has(f) && !same_value(f, typed.get(*f), run.get(*f)));
    if other_data {
        merged.remove("val-split");
    }
    for flag in DATA_FLAGS.iter().filter(|f| a.given.has(f)) {
        let (now, was) = (typed.get(*flag), run.get(*flag));
        if !same_value(flag, now, was) && *flag != "limit-eval" {
            eprintln!(
                "note: evaluating with --{flag} {} (the run's: {})",
                show(now),
                show(was)
            );
        }
        match now {
            Some(v) => merged.insert(flag.to_string(), v.clone()),
            None => merged.remove(*flag),
        };
    }
    let mut words = vec!["eval".to_string(), "--checkpoint=-".to_string()];
    words.extend(argv(&merged));
    match parse(words, Path::new(run_folder::RECORD))? {
        Command::Eval(e) => Ok(e.data),
        _ => unreachable!("parsed an eval command line"),
    }
}

fn unrecorded_eval_data(
    a: &EvalArgs,
    meta: &HashMap<String, String>,
) -> Result<DataArgs, UsageError> {
    let mut data = a.data.clone();
    let recorded = meta.get("dataset").filter(|_| meta.contains_key("step"));
    let (Some(recorded), false) = (recorded, a.given.has("dataset") || a.given.has("data-dir"))
    else {
        return Ok(data);
    };
    match DatasetKind::from_str(recorded, true) {
        Ok(kind) => {
            eprintln!(
                "note: evaluating on {recorded}, the checkpoint's dataset, from its default \
                 place (no run.json beside the checkpoint says where it was; --data-dir to \
                 choose)"
            );
            data.dataset = kind;
            Ok(data)
        }
        Err(_) => Err(UsageError::Combination(format!(
            "the checkpoint was trained on an image folder ('{recorded}') and no run.json \
             beside it says where that is: pass --dataset folder --data-dir <the folder>"
        ))),
    }
}
