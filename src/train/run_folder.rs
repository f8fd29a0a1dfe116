//! A run folder: `run.json` (the flags the run was started or last resumed with, the data's
//! absolute path among them, so `--resume`, `eval` and `infer` need nothing else),
//! `metrics.jsonl` (one line per finished epoch), the checkpoint pair
//! `last.safetensors` + `last.state.safetensors` (with `--keep` older `step-N` pairs),
//! `best.safetensors`, and `run.lock`, which keeps a second run out while this one lives.
//!
//! A checkpoint is one unit: best model, then the epoch's metrics line, then the
//! model/state pair (both files stamped with the step, flushed, then renamed). A resume
//! takes the newest pair whose two files agree and trims metrics.jsonl to its step, so a
//! failure at any point leaves neither a mixed pair nor a duplicated epoch.

use super::{EpochMetrics, TrainError};
use crate::model::checkpoint::{self, inject, CheckpointError, TensorFile};
use std::io::Write;
use std::path::{Path, PathBuf};

pub const LAST: &str = "last.safetensors";
pub const LAST_STATE: &str = "last.state.safetensors";
pub const BEST: &str = "best.safetensors";
pub const METRICS: &str = "metrics.jsonl";
pub const LOCK: &str = "run.lock";
pub const RECORD: &str = "run.json";

fn io(path: &Path) -> impl Fn(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io {
        path: path.into(),
        source,
    }
}

pub struct RunFolder {
    pub dir: PathBuf,
    /// Past pairs kept besides last/best.
    keep: usize,
    _lock: RunLock,
}

impl RunFolder {
    /// Create (if needed) and lock the folder.
    pub fn open(dir: &Path, keep: usize) -> Result<RunFolder, TrainError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let lock = RunLock::acquire(dir)?;
        // Temporaries of a process killed mid-write: nobody else writes here (the lock).
        for entry in std::fs::read_dir(dir).map_err(io(dir))?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let ours = ["last.", "best.", "step-", "metrics.", "run.json"]
                .iter()
                .any(|p| name.starts_with(p));
            if ours && name.ends_with(".tmp") {
                let path = entry.path();
                std::fs::remove_file(&path).map_err(io(&path))?;
            }
        }
        Ok(RunFolder {
            dir: dir.to_path_buf(),
            keep,
            _lock: lock,
        })
    }

    /// Replace run.json (written whole, then renamed: a reader never sees half of it).
    pub fn write_record(&self, record: &serde_json::Value) -> Result<(), TrainError> {
        let text = serde_json::to_string_pretty(record).unwrap_or_default() + "\n";
        Ok(checkpoint::write_atomic(
            &self.dir.join(RECORD),
            text.as_bytes(),
        )?)
    }

    pub fn metrics_path(&self) -> PathBuf {
        self.dir.join(METRICS)
    }

    /// The epochs logged up to `step`; lines after it (an epoch whose checkpoint did not
    /// complete) are removed from the file.
    pub fn trim_metrics(&self, step: u64) -> Result<Vec<EpochMetrics>, TrainError> {
        let path = self.metrics_path();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(&path)(e)),
        };
        let all = parse_metrics(&path, &text)?;
        // The kept lines are written back as they were, not re-serialised, so the file
        // stays byte for byte what the uninterrupted run wrote.
        let lines = text.lines().filter(|l| !l.trim().is_empty());
        let mut kept = Vec::new();
        let mut kept_text = String::new();
        for (line, m) in lines.zip(all) {
            if m.step <= step {
                kept_text.push_str(line);
                kept_text.push('\n');
                kept.push(m);
            }
        }
        if kept_text != text {
            checkpoint::write_atomic(&path, kept_text.as_bytes())?;
        }
        Ok(kept)
    }

    /// Append one epoch's line and flush it to disk.
    pub fn append_metrics(&self, m: &EpochMetrics) -> Result<(), TrainError> {
        let path = self.metrics_path();
        let line = m.to_json() + "\n";
        (|| {
            inject::check()?;
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)?;
            inject::check()?;
            f.write_all(line.as_bytes())?;
            inject::check()?;
            f.sync_all()
        })()
        .map_err(io(&path))
    }

    pub fn save_best(&self, model: &TensorFile) -> Result<(), TrainError> {
        let path = self.dir.join(BEST);
        Ok(checkpoint::write_atomic(&path, &model.to_bytes(&path)?)?)
    }

    /// Commit `model` + `state` (both stamped with `step`) as last; the previous pair is
    /// renamed to `step-N` first and removed (beyond `keep`) only once the new one is in.
    pub fn commit(
        &self,
        model: &TensorFile,
        state: &TensorFile,
        step: u64,
    ) -> Result<(), TrainError> {
        let (last, last_state) = (self.dir.join(LAST), self.dir.join(LAST_STATE));
        let model_bytes = model.to_bytes(&last)?;
        let state_bytes = state.to_bytes(&last_state)?;
        if let (Ok(Some(a)), Ok(Some(b))) = (
            checkpoint::read_step(&last),
            checkpoint::read_step(&last_state),
        ) {
            if a == b && a != step {
                let (m, s) = self.step_pair(a);
                checkpoint::rename(&last_state, &s)?;
                checkpoint::rename(&last, &m)?;
            }
        }
        checkpoint::commit_pair((&last, &model_bytes), (&last_state, &state_bytes))?;
        self.prune(step)
    }

    fn step_pair(&self, step: u64) -> (PathBuf, PathBuf) {
        (
            self.dir.join(format!("step-{step:09}.safetensors")),
            self.dir.join(format!("step-{step:09}.state.safetensors")),
        )
    }

    /// Remove kept pairs beyond the newest `keep` (and any not older than `last`).
    fn prune(&self, last: u64) -> Result<(), TrainError> {
        let mut steps: Vec<u64> = std::fs::read_dir(&self.dir)
            .map_err(io(&self.dir))?
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.strip_prefix("step-")?
                    .strip_suffix(".state.safetensors")?
                    .parse()
                    .ok()
            })
            .collect();
        steps.sort_unstable_by(|a, b| b.cmp(a));
        let older = steps.iter().filter(|&&s| s < last).skip(self.keep);
        for &s in older.chain(steps.iter().filter(|&&s| s >= last)) {
            let (m, st) = self.step_pair(s);
            for p in [m, st] {
                match inject::check().and_then(|_| std::fs::remove_file(&p)) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(&p)(e)),
                    _ => {}
                }
            }
        }
        Ok(())
    }
}

/// The run.json of the run folder `dir`: `None` when it has none (a folder made before
/// vit-wgpu wrote one); an error naming the file when it is not a JSON object.
pub fn read_record(dir: &Path) -> Result<Option<serde_json::Value>, TrainError> {
    let path = dir.join(RECORD);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(&path)(e)),
    };
    match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(v) if v.is_object() => Ok(Some(v)),
        Ok(_) => Err(TrainError::Other(format!(
            "{}: expected a JSON object (the run's flags), found another JSON value",
            path.display()
        ))),
        Err(e) => Err(TrainError::Other(format!(
            "{}: not valid JSON ({e}); fix it, or delete it and resume with the run's flags",
            path.display()
        ))),
    }
}

/// metrics.jsonl's records. A last line without its newline is a torn write and is
/// dropped; any other unreadable line is an error naming the file and the line.
pub fn parse_metrics(path: &Path, text: &str) -> Result<Vec<EpochMetrics>, TrainError> {
    let complete = match text.rfind('\n') {
        Some(i) => &text[..=i],
        None => "",
    };
    let mut out = Vec::new();
    for (i, line) in complete.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let m = EpochMetrics::from_json(line).ok_or_else(|| {
            TrainError::Other(format!(
                "{}: line {} is not a metrics record: '{}'",
                path.display(),
                i + 1,
                line.chars().take(80).collect::<String>()
            ))
        })?;
        out.push(m);
    }
    Ok(out)
}

/// The checkpoint pair to resume from: `resume` names a run folder or a model file. The
/// pair must carry the same step; if the named one does not (a failure between its two
/// renames), the newest consistent pair in the folder is used, and the choice is printed.
pub fn resume_pair(resume: &Path) -> Result<(u64, PathBuf, PathBuf), TrainError> {
    let (weights, state) = super::resume_paths(resume);
    let steps = (
        checkpoint::read_step(&weights),
        checkpoint::read_step(&state),
    );
    if let (Ok(Some(a)), Ok(Some(b))) = &steps {
        if a == b {
            return Ok((*a, weights, state));
        }
    }
    let dir = weights
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let describe = |r: &Result<Option<u64>, CheckpointError>| match r {
        Ok(Some(s)) => format!("step {s}"),
        Ok(None) => "no step".to_string(),
        Err(CheckpointError::Io { source, .. }) => match source.kind() {
            std::io::ErrorKind::NotFound => "missing".to_string(),
            _ => source.to_string(),
        },
        Err(e) => e.to_string(),
    };
    let found = format!(
        "{} ({}) and {} ({})",
        weights.display(),
        describe(&steps.0),
        state.display(),
        describe(&steps.1)
    );
    match checkpoint::newest_consistent_pair(dir) {
        Some((step, m, s)) => {
            eprintln!(
                "warning: {found} are not one checkpoint; resuming from the consistent pair \
                 at step {step}: {}",
                m.display()
            );
            Ok((step, m, s))
        }
        None => Err(TrainError::Other(format!(
            "nothing to resume: {found}, and no other model/state pair of one step in {}",
            dir.display()
        ))),
    }
}

/// `run.lock`: the PID and host of the run using the folder.
struct RunLock {
    path: PathBuf,
}

impl RunLock {
    fn acquire(dir: &Path) -> Result<RunLock, TrainError> {
        let path = dir.join(LOCK);
        let host = hostname();
        let me = format!("{} {host}\n", std::process::id());
        for _ in 0..2 {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut f) => {
                    f.write_all(me.as_bytes()).map_err(io(&path))?;
                    return Ok(RunLock { path });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let text = std::fs::read_to_string(&path).unwrap_or_default();
                    let mut words = text.split_whitespace();
                    let pid = words.next().and_then(|p| p.parse::<u32>().ok());
                    let holder_host = words.next().unwrap_or("").to_string();
                    if let Some(pid) = pid {
                        if holder_host != host || process_alive(pid) {
                            return Err(TrainError::Locked {
                                dir: dir.into(),
                                pid,
                                host: holder_host,
                            });
                        }
                        eprintln!(
                            "{}: taking over the lock of process {pid}, which is no longer running",
                            path.display()
                        );
                    }
                    // A dead holder, or a lock torn by a crash while it was written.
                    std::fs::remove_file(&path).map_err(io(&path))?;
                }
                Err(e) => return Err(io(&path)(e)),
            }
        }
        Err(TrainError::Other(format!(
            "{}: another run keeps taking the lock",
            path.display()
        )))
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// This machine's name, as written in run.lock.
pub fn hostname() -> String {
    let from_file = |p: &str| std::fs::read_to_string(p).ok();
    std::env::var("COMPUTERNAME")
        .ok()
        .or_else(|| from_file("/proc/sys/kernel/hostname"))
        .or_else(|| from_file("/etc/hostname"))
        .or_else(|| {
            std::process::Command::new("hostname")
                .output()
                .ok()
                .and_then(|o| String::from_utf8(o.stdout).ok())
        })
        .map(|s| s.trim().replace(char::is_whitespace, "_"))
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown-host".into())
}

/// Whether process `pid` on this machine is running (this process counts as running).
pub fn process_alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    if cfg!(target_os = "linux") {
        // A killed process not yet reaped by its parent is a zombie ('Z'): dead too.
        return match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(stat) => stat
                .rsplit_once(')')
                .is_none_or(|(_, rest)| !rest.trim_start().starts_with('Z')),
            Err(_) => false,
        };
    }
    let status = if cfg!(windows) {
        std::process::Command::new("tasklist")
            .args(["/FI", &format!("PID eq {pid}"), "/NH"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).contains(&pid.to_string()))
    } else {
        std::process::Command::new("kill")
            .args(["-0", &pid.to_string()])
            .stderr(std::process::Stdio::null())
            .status()
            .map(|s| s.success())
    };
    // When the check itself fails, assume the holder lives: refusing is the safe side.
    status.unwrap_or(true)
}
