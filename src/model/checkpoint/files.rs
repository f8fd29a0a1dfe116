//! Checkpoint files on disk (native only): atomic writes, the model + state pair committed
//! as one unit, and the newest consistent pair of a run folder.

use super::{
    any_from_file, model_from_file, state_file, train_state_from_file, CheckpointError,
    ConfigHints, TensorFile, TrainState,
};
use crate::model::{Config, HostParams};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

impl TensorFile {
    pub fn read(path: &Path) -> Result<TensorFile, CheckpointError> {
        let bytes = std::fs::read(path).map_err(|source| CheckpointError::Io {
            path: path.into(),
            source,
        })?;
        TensorFile::from_bytes(path, &bytes)
    }

    /// Write atomically: to `<path>.tmp`, then rename over `path`.
    pub fn write(&self, path: &Path) -> Result<(), CheckpointError> {
        write_atomic(path, &self.to_bytes(path)?)
    }
}

/// Load a checkpoint whose metadata carries the config.
pub fn load_model(path: &Path) -> Result<(Config, HostParams, TensorFile), CheckpointError> {
    model_from_file(path, TensorFile::read(path)?)
}

/// Load weights for inference or fine-tuning (see [`any_from_file`]).
pub fn load_any(
    path: &Path,
    hints: &ConfigHints,
) -> Result<(Config, HostParams, TensorFile), CheckpointError> {
    if super::super::hub::is_model_folder(path) {
        return super::super::hub::load_folder(path, hints);
    }
    any_from_file(path, TensorFile::read(path)?, hints)
}

pub fn load_train_state(path: &Path, params: &HostParams) -> Result<TrainState, CheckpointError> {
    train_state_from_file(path, &TensorFile::read(path)?, params)
}

pub fn save_train_state(
    path: &Path,
    params: &HostParams,
    state: &TrainState,
) -> Result<(), CheckpointError> {
    state_file(params, state).write(path)
}

/// Save the model's weights with the config in the metadata (plus any `extra` entries).
pub fn save_model(
    path: &Path,
    cfg: &Config,
    params: &HostParams,
    extra: &[(&str, String)],
) -> Result<(), CheckpointError> {
    super::model_file(cfg, params, extra).write(path)
}

/// Failure injection for tests: every file-system step of a checkpoint (create, write,
/// fsync, rename, remove, append) counts as one write; the Nth fails with an I/O error.
/// Set from a test with [`fail_nth_write`] or for a whole process with the environment
/// variable `VIT_WGPU_FAIL_WRITE=N`.
pub mod inject {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Once;

    static FAIL_AT: AtomicU64 = AtomicU64::new(0);
    static DONE: AtomicU64 = AtomicU64::new(0);
    static FROM_ENV: Once = Once::new();

    /// Fail the `n`th write from now on (`None`: never), and restart the count.
    pub fn fail_nth_write(n: Option<u64>) {
        FROM_ENV.call_once(|| {});
        DONE.store(0, Ordering::SeqCst);
        FAIL_AT.store(n.unwrap_or(0), Ordering::SeqCst);
    }

    /// Writes counted since the last [`fail_nth_write`] (or the process start).
    pub fn writes_done() -> u64 {
        DONE.load(Ordering::SeqCst)
    }

    /// Count one write; the injected one fails.
    pub fn check() -> std::io::Result<()> {
        FROM_ENV.call_once(|| {
            if let Some(n) = std::env::var("VIT_WGPU_FAIL_WRITE")
                .ok()
                .and_then(|v| v.parse().ok())
            {
                FAIL_AT.store(n, Ordering::SeqCst);
            }
        });
        let n = DONE.fetch_add(1, Ordering::SeqCst) + 1;
        if n == FAIL_AT.load(Ordering::SeqCst) {
            return Err(std::io::Error::other(format!(
                "injected write failure (write number {n})"
            )));
        }
        Ok(())
    }
}

fn io_error(path: &Path) -> impl Fn(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.into(),
        source,
    }
}

/// `<path>.tmp`.
pub fn temp_path(path: &Path) -> PathBuf {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    PathBuf::from(tmp)
}

/// Write `bytes` to `<path>.tmp` and flush it to disk (the temporary is removed on failure).
fn write_temp(path: &Path, bytes: &[u8]) -> Result<PathBuf, CheckpointError> {
    use std::io::Write;
    let tmp = temp_path(path);
    let result = (|| {
        inject::check()?;
        let mut f = std::fs::File::create(&tmp)?;
        inject::check()?;
        f.write_all(bytes)?;
        inject::check()?;
        f.sync_all()
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(io_error(path)(e));
    }
    Ok(tmp)
}

/// A rename that counts as one write for the failure injection.
pub fn rename(from: &Path, to: &Path) -> Result<(), CheckpointError> {
    inject::check()
        .and_then(|_| std::fs::rename(from, to))
        .map_err(io_error(to))
}

/// Write to a temporary file beside `path`, flush it to disk, then rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), CheckpointError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io_error(path))?;
    }
    let tmp = write_temp(path, bytes)?;
    rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// Commit a model and its training state as one unit: both written and flushed as
/// temporaries, then renamed (state first). Every file is stamped with its step, so a
/// failure between the two renames leaves a pair of different steps that
/// [`newest_consistent_pair`] recognises. Temporaries are removed when a write fails.
pub fn commit_pair(model: (&Path, &[u8]), state: (&Path, &[u8])) -> Result<(), CheckpointError> {
    let model_tmp = write_temp(model.0, model.1)?;
    let result = write_temp(state.0, state.1).and_then(|state_tmp| {
        rename(&state_tmp, state.0)
            .inspect_err(|_| {
                let _ = std::fs::remove_file(&state_tmp);
            })
            .and_then(|_| rename(&model_tmp, model.0))
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&model_tmp);
    }
    result
}

/// The `step` a checkpoint file is stamped with, read from its header alone (`None`: not
/// stamped). The header length is checked against the file size before anything is read.
pub fn read_step(path: &Path) -> Result<Option<u64>, CheckpointError> {
    use std::io::Read;
    let format = |message: String| CheckpointError::Format {
        path: path.into(),
        message,
    };
    let mut f = std::fs::File::open(path).map_err(io_error(path))?;
    let size = f.metadata().map_err(io_error(path))?.len();
    let mut len = [0u8; 8];
    f.read_exact(&mut len).map_err(io_error(path))?;
    let n = u64::from_le_bytes(len);
    if n > size.saturating_sub(8) || n > 100_000_000 {
        return Err(format(format!(
            "header length {n} exceeds the file's {size} bytes"
        )));
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header).map_err(io_error(path))?;
    let v: serde_json::Value =
        serde_json::from_slice(&header).map_err(|e| format(format!("header: {e}")))?;
    match v.get("__metadata__").and_then(|m| m.get("step")) {
        None => Ok(None),
        Some(s) => s
            .as_str()
            .and_then(|s| s.parse().ok())
            .map(Some)
            .ok_or_else(|| format(format!("metadata 'step' is not a step number: {s}"))),
    }
}

/// The newest (model, state) pair in `dir` whose two files carry the same step:
/// `last.safetensors` + `last.state.safetensors` when consistent, else any kept
/// `step-N` pair or a mix left by a failure between two renames. Unreadable files are
/// ignored here (the caller reads the chosen pair in full and reports its errors).
pub fn newest_consistent_pair(dir: &Path) -> Option<(u64, PathBuf, PathBuf)> {
    let mut models = BTreeMap::new();
    let mut states = BTreeMap::new();
    let entries = std::fs::read_dir(dir).ok()?;
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_ours = name == "last.safetensors"
            || name == "last.state.safetensors"
            || (name.starts_with("step-") && name.ends_with(".safetensors"));
        if !is_ours {
            continue;
        }
        let Ok(Some(step)) = read_step(&path) else {
            continue;
        };
        let table = if name.ends_with(".state.safetensors") {
            &mut states
        } else {
            &mut models
        };
        // Prefer the `last` name when two files carry the same step.
        if name.starts_with("last") || !table.contains_key(&step) {
            table.insert(step, path);
        }
    }
    models
        .into_iter()
        .rev()
        .find_map(|(step, model)| states.remove(&step).map(|state| (step, model, state)))
}
