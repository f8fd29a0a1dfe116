//! Data-parallel training under mpirun (`cargo test --release --features mpi --test mpi`):
//! two ranks on the built binary against one process with the same global batch, on real
//! Fashion-MNIST images with augmentation and dropout on. Per-step losses and final weights
//! agree within 1e-5 (relative), the two ranks' final weights are bit-identical, sharded
//! evaluation gives the same validation numbers, a checkpoint of 2 ranks resumes in 1 process
//! and ends where the 1-process run ends, and an error on one rank ends the whole job with
//! the rank and the message. Each launch compiles the pipelines (~20 s on lavapipe), so the
//! file makes four.
#![cfg(feature = "mpi")]

mod common;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use vit_wgpu::model::checkpoint;

const BIN: &str = env!("CARGO_BIN_EXE_vit-wgpu");

/// `mpirun`, or a failure naming the packages that provide it.
fn mpirun() -> Command {
    let found = Command::new("mpirun")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "mpirun was not found: these tests launch the binary under OpenMPI's mpirun. Install \
         it (Debian/Ubuntu: `apt-get install libopenmpi-dev openmpi-bin libclang-dev`)"
    );
    let mut c = Command::new("mpirun");
    c.args([
        "--allow-run-as-root",
        "--oversubscribe",
        "--bind-to",
        "none",
    ])
    // Shared memory between the ranks, without the cross-memory attach containers forbid.
    .env("OMPI_MCA_btl", "self,vader")
    .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
    .env("LP_NUM_THREADS", "1");
    c
}

/// Runs `cmd`, killing it after `limit` (a hung collective must fail the test, not hang it).
/// One launch at a time: the tests share two cores.
fn run(mut cmd: Command, limit: Duration) -> Output {
    static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = ONE.lock().unwrap_or_else(|e| e.into_inner());
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the process");
    let t0 = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if t0.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "still running after {limit:?} (a rank waiting forever?); stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    child.wait_with_output().expect("output")
}

fn train_args(out: &Path, extra: &[&str]) -> Vec<String> {
    let data = common::fashion_mnist_dir();
    let mut args: Vec<String> = [
        "train",
        "--preset",
        "micro",
        "--dim",
        "48",
        "--heads",
        "3",
        "--mlp-hidden",
        "96",
        "--dataset",
        "fashion-mnist",
        "--limit-train",
        "64",
        "--limit-eval",
        "40",
        "--batch-size",
        "8",
        "--epochs",
        "1",
        "--lr",
        "3e-3",
        "--warmup",
        "2",
        "--dropout",
        "0.1",
        "--seed",
        "5",
        "--save-every",
        "4",
        "--quiet",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for (flag, value) in [
        ("--data-dir", data),
        ("--out", out.to_path_buf()),
        ("--log-steps", out.join("steps.jsonl")),
        ("--rank-weights", out.to_path_buf()),
    ] {
        args.push(flag.into());
        args.push(value.display().to_string());
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn train(ranks: usize, out: &Path, extra: &[&str]) -> Output {
    let args = train_args(out, extra);
    let cmd = match ranks {
        1 => {
            let mut c = Command::new(BIN);
            c.args(&args).env("LP_NUM_THREADS", "1");
            c
        }
        n => {
            let mut c = mpirun();
            c.args(["-n", &n.to_string(), BIN]).args(&args);
            c
        }
    };
    let out = run(cmd, Duration::from_secs(240));
    assert!(
        out.status.success(),
        "{ranks} rank(s) failed: {}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn step_losses(dir: &Path) -> Vec<(u64, f64)> {
    let text = std::fs::read_to_string(dir.join("steps.jsonl")).expect("steps.jsonl");
    text.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("a JSON line");
            (
                v["step"].as_u64().expect("step"),
                v["loss"].as_f64().expect("loss"),
            )
        })
        .collect()
}

fn weights(path: &Path) -> Vec<f32> {
    let (_, params, _) = checkpoint::load_model(path).expect("weights");
    params.values.concat()
}

/// ||a - b|| / ||b||
fn relative(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let d: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - *y as f64).powi(2))
        .sum();
    let n: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (d / n).sqrt()
}

fn fresh(name: &str) -> PathBuf {
    common::fresh_dir(&format!("mpi-{name}"))
}

#[test]
fn two_ranks_train_exactly_like_one_process_with_the_global_batch_and_resume_in_one() {
    let one = fresh("one");
    train(1, &one, &[]);
    let two = fresh("two");
    let out = train(2, &two, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    for rank in 0..2 {
        assert!(
            stderr.contains(&format!("{rank}/2: adapter [")),
            "no line naming rank {rank}:\n{stderr}"
        );
    }
    // Per-step losses: every step, within 1e-5 relative.
    let (l1, l2) = (step_losses(&one), step_losses(&two));
    assert_eq!(l1.len(), 8, "one process: 64 images / batch 8");
    assert_eq!(
        l1.iter().map(|s| s.0).collect::<Vec<_>>(),
        l2.iter().map(|s| s.0).collect::<Vec<_>>()
    );
    let worst = l1
        .iter()
        .zip(&l2)
        .map(|(a, b)| (a.1 - b.1).abs() / a.1.abs())
        .fold(0.0, f64::max);
    eprintln!(
        "per-step losses: worst relative difference {worst:.3e} over {} steps",
        l1.len()
    );
    assert!(worst < 1e-5, "losses differ: {l1:?} vs {l2:?}");
    // Final weights: the two ranks bit-identical; rank 0's checkpoint = its weights; within
    // 1e-5 of the single process.
    let (r0, r1) = (
        weights(&two.join("rank-0.safetensors")),
        weights(&two.join("rank-1.safetensors")),
    );
    let bits = |w: &[f32]| w.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert!(
        bits(&r0) == bits(&r1),
        "the ranks' final weights differ (max |diff| {})",
        r0.iter()
            .zip(&r1)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max)
    );
    assert!(bits(&weights(&two.join("last.safetensors"))) == bits(&r0));
    let single = weights(&one.join("rank-0.safetensors"));
    let start = initial_weights(&one.join("rank-0.safetensors"));
    let (err, moved) = (relative(&r0, &single), relative(&single, &start));
    eprintln!(
        "final weights: relative difference {err:.3e} (they moved {moved:.3e} from the start)"
    );
    assert!(err < 1e-5, "final weights differ by {err:.3e}");
    assert!(
        moved > 1e-3,
        "training hardly moved the weights ({moved:.3e}): a weak comparison"
    );
    // Sharded evaluation: the validation numbers match.
    let m1 = std::fs::read_to_string(one.join("metrics.jsonl")).expect("metrics");
    let m2 = std::fs::read_to_string(two.join("metrics.jsonl")).expect("metrics");
    let val = |m: &str, k: &str| {
        let v: serde_json::Value =
            serde_json::from_str(m.lines().last().expect("a line")).expect("json");
        v[k].as_f64().expect("number")
    };
    assert_eq!(val(&m1, "val_accuracy"), val(&m2, "val_accuracy"));
    let vl = (val(&m1, "val_loss") - val(&m2, "val_loss")).abs() / val(&m1, "val_loss");
    assert!(vl < 1e-5, "validation loss differs by {vl:.3e}");

    // The 2 ranks' checkpoint at step 4 resumes in 1 process and ends where the 1-process
    // run ended (the checkpoint holds no rank state).
    let half = fresh("half");
    for (from, to) in [
        ("step-000000004.safetensors", "last.safetensors"),
        ("step-000000004.state.safetensors", "last.state.safetensors"),
    ] {
        std::fs::copy(two.join(from), half.join(to)).expect("the step-4 checkpoint of 2 ranks");
    }
    train(1, &half, &["--resume", &half.display().to_string()]);
    let resumed = weights(&half.join("rank-0.safetensors"));
    let err = relative(&resumed, &single);
    eprintln!("2 ranks to step 4, then 1 process: relative difference {err:.3e}");
    assert!(err < 1e-5, "the resumed run ends {err:.3e} away");
    let steps: Vec<u64> = step_losses(&half).iter().map(|s| s.0).collect();
    assert_eq!(
        steps,
        [5, 6, 7, 8],
        "the resumed process continues at step 5"
    );
    for dir in [one, two, half] {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// The starting weights of the model in `checkpoint` (seed 5, as `train_args` gives).
fn initial_weights(checkpoint: &Path) -> Vec<f32> {
    let (cfg, _, _) = checkpoint::load_model(checkpoint).expect("weights");
    vit_wgpu::model::HostParams::init(&cfg, 5).values.concat()
}

#[test]
fn an_error_on_one_rank_aborts_the_whole_job_with_the_rank_and_the_message() {
    // Only rank 0 opens the run folder: a lock held by another machine stops it while rank 1
    // already waits in the first collective.
    let dir = fresh("locked");
    std::fs::write(dir.join("run.lock"), "4242 another-machine\n").expect("lock");
    let mut cmd = mpirun();
    cmd.args(["-n", "2", BIN]).args(train_args(&dir, &[]));
    let out = run(cmd, Duration::from_secs(120));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the job succeeded:\n{stderr}");
    assert!(
        stderr.contains("rank 0/2: error:") && stderr.contains("in use by process 4242"),
        "no error naming the rank and the lock:\n{stderr}"
    );
    // Rank 1 was stopped in its first collective: it never finished.
    assert!(
        !dir.join("rank-1.safetensors").exists(),
        "rank 1 finished training:\n{stderr}"
    );
    let _ = std::fs::remove_dir_all(dir);
}
