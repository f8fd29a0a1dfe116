//! Run folders and data folders as a new user meets them, through the built binary:
//! `train --resume DIR` alone continues the run in DIR with its recorded data and flags
//! (bit-identical after kill -9), a flag that contradicts the run is refused before any work,
//! `eval`/`infer` given a run folder use its data and class names, an old folder without
//! run.json says what to pass, and an image folder with only train/ holds out a stratified
//! validation split. Datasets are written in the real formats: gzipped idx, PNG folders.

mod common;
use common::{fresh_dir, metrics_log, synthetic};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use vit_wgpu::data::folder::{hold_out, FileList};
use vit_wgpu::model::checkpoint;
use vit_wgpu::train::run_folder;

/// Runs vit-wgpu in `cwd` (so a default `runs/` folder would show up there).
fn vit(cwd: &Path, args: &[String]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vit-wgpu"))
        .current_dir(cwd)
        .args(args)
        .output()
        .expect("run vit-wgpu")
}

fn words(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

fn arg(p: &Path) -> String {
    p.to_str().expect("a UTF-8 temp path").to_string()
}

/// The stderr of a run that must succeed.
fn succeeds(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "failed: {stderr}");
    stderr
}

/// The stderr of a run that must fail with `code`.
fn fails(out: &Output, code: i32) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(code), "{stderr}");
    stderr
}

fn json_line(out: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no JSON in {stdout}"))
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(bytes).expect("gzip");
    enc.finish().expect("gzip")
}

/// `train` and `test` (8x8 grey, 3 classes) as the four gzipped Fashion-MNIST idx files.
fn write_fashion_mnist(dir: &Path, train_images: usize, test_images: usize) {
    for (prefix, ds) in [
        ("train", synthetic(train_images, 1)),
        ("t10k", synthetic(test_images, 2)),
    ] {
        let n = ds.len as u32;
        let images = common::idx_bytes(0x803, &[n, 8, 8], &ds.images);
        let labels = common::idx_bytes(0x801, &[n], &common::label_bytes(&ds));
        for (kind, bytes) in [("images-idx3", images), ("labels-idx1", labels)] {
            let path = dir.join(format!("{prefix}-{kind}-ubyte.gz"));
            std::fs::write(path, gzip(&bytes)).expect("write idx");
        }
    }
}

/// A tiny model and schedule, so a run takes seconds on a CPU adapter.
const TINY: [&str; 12] = [
    "--preset",
    "micro",
    "--dim",
    "16",
    "--depth",
    "1",
    "--heads",
    "2",
    "--mlp-hidden",
    "32",
    "--batch-size",
    "8",
];

fn fashion_run(data: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    let mut a = words(&["train", "--dataset", "fashion-mnist", "--data-dir"]);
    a.push(arg(data));
    a.extend(words(&TINY));
    a.extend(words(extra));
    a.extend(["--quiet".into(), "--out".into(), arg(out)]);
    a
}

fn final_bits(dir: &Path) -> Vec<Vec<u32>> {
    let (_, p, _) = checkpoint::load_model(&dir.join(run_folder::LAST)).expect("load");
    p.values
        .iter()
        .map(|v| v.iter().map(|x| x.to_bits()).collect())
        .collect()
}

/// A `--log-steps` file as (step, loss bits).
fn step_losses(path: &Path) -> Vec<(u64, u32)> {
    let text = std::fs::read_to_string(path).expect("step log");
    text.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("json");
            let step = v["step"].as_u64().expect("step");
            (step, (v["loss"].as_f64().expect("loss") as f32).to_bits())
        })
        .collect()
}

fn recorded_flag(dir: &Path, flag: &str) -> Option<String> {
    let record = run_folder::read_record(dir)
        .expect("run.json")
        .expect("present");
    record["flags"][flag].as_str().map(str::to_string)
}

#[test]
fn a_killed_run_resumed_with_only_its_folder_continues_there_bit_identically() {
    let root = fresh_dir("runs-kill");
    let data = root.join("data");
    std::fs::create_dir_all(&data).expect("mkdir");
    // 800 images in batches of 8: 100 steps per epoch, long enough to kill mid-epoch.
    write_fashion_mnist(&data, 800, 16);
    let schedule = [
        "--epochs",
        "2",
        "--lr",
        "3e-3",
        "--warmup",
        "5",
        "--dropout",
        "0.1",
        "--save-every",
        "5",
        "--seed",
        "3",
    ];
    let (full, killed) = (root.join("full"), root.join("killed"));
    let mut uninterrupted = fashion_run(&data, &full, &schedule);
    uninterrupted.extend(["--log-steps".into(), arg(&root.join("full.jsonl"))]);
    succeeds(&vit(&root, &uninterrupted));

    let mut child = Command::new(env!("CARGO_BIN_EXE_vit-wgpu"))
        .current_dir(&root)
        .args(fashion_run(&data, &killed, &schedule))
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let state = killed.join(run_folder::LAST_STATE);
    let t0 = std::time::Instant::now();
    while !matches!(checkpoint::read_step(&state), Ok(Some(s)) if s >= 10) {
        assert!(
            t0.elapsed().as_secs() < 120,
            "no checkpoint at step 10 in 2 min"
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    child.kill().expect("kill -9");
    child.wait().expect("reap");
    let step = checkpoint::read_step(&state)
        .expect("state")
        .expect("stamped");
    assert!(
        !step.is_multiple_of(100),
        "killed at an epoch's end (step {step})"
    );

    // From another directory, with nothing but the folder: the data comes from run.json.
    let elsewhere = root.join("elsewhere");
    std::fs::create_dir_all(&elsewhere).expect("mkdir");
    let mut resume = words(&["train", "--resume"]);
    resume.extend([
        arg(&killed),
        "--log-steps".into(),
        arg(&root.join("rest.jsonl")),
    ]);
    let stderr = succeeds(&vit(&elsewhere, &resume));
    assert!(!stderr.contains("cifar"), "{stderr}");
    assert!(
        stderr.contains(&format!("run folder: {}", killed.display())),
        "{stderr}"
    );
    assert!(
        !elsewhere.join("runs").exists(),
        "wrote a default run folder"
    );
    assert!(
        final_bits(&full) == final_bits(&killed),
        "final weights differ"
    );
    assert_eq!(metrics_log(&full), metrics_log(&killed), "metrics differ");
    assert_eq!(metrics_log(&killed).len(), 2);
    let after_kill: Vec<_> = step_losses(&root.join("full.jsonl"))
        .into_iter()
        .filter(|(s, _)| *s > step)
        .collect();
    assert_eq!(step_losses(&root.join("rest.jsonl")), after_kill);
    assert_eq!(after_kill.len() as u64, 200 - step);
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn a_flag_that_differs_from_the_run_is_refused_before_any_work_and_epochs_extend_it() {
    let root = fresh_dir("runs-flags");
    let data = root.join("data");
    std::fs::create_dir_all(&data).expect("mkdir");
    write_fashion_mnist(&data, 64, 16);
    let run = root.join("run");
    succeeds(&vit(&root, &fashion_run(&data, &run, &["--epochs", "1"])));
    let last = std::fs::read(run.join(run_folder::LAST)).expect("last");
    let resume = |extra: &[&str]| {
        let mut a = words(&["train", "--resume"]);
        a.push(arg(&run));
        a.extend(words(extra));
        vit(&root, &a)
    };

    let out = resume(&[
        "--lr",
        "1e-3",
        "--seed",
        "4",
        "--batch-size",
        "16",
        "--quiet",
    ]);
    let stderr = fails(&out, 2);
    for line in [
        "--lr: the run's 0.00025, given 0.001",
        "--seed: the run's 0, given 4",
        "--batch-size: the run's 8, given 16",
        "only --epochs, --data-dir",
        "--init",
    ] {
        assert!(stderr.contains(line), "missing '{line}' in: {stderr}");
    }
    assert!(!stderr.contains("adapter:"), "work started: {stderr}");
    assert_eq!(
        std::fs::read(run.join(run_folder::LAST)).expect("last"),
        last
    );

    let stderr = fails(&resume(&["--out", &arg(&root.join("other"))]), 2);
    assert!(stderr.contains("continues in its own folder"), "{stderr}");

    // The same value as the run's is no conflict; --epochs lengthens the run in its folder.
    let stderr = succeeds(&resume(&["--epochs", "2", "--lr", "0.00025", "--quiet"]));
    assert!(
        stderr.contains("note: --epochs 2 (the run's: 1)"),
        "{stderr}"
    );
    assert_eq!(metrics_log(&run).len(), 2);
    assert_eq!(recorded_flag(&run, "epochs").as_deref(), Some("2"));

    // An old folder (no run.json) says what to pass, then records it once resumed with it.
    std::fs::remove_file(run.join(run_folder::RECORD)).expect("rm run.json");
    let stderr = fails(&resume(&[]), 2);
    for part in [
        "no run.json",
        "--dataset fashion-mnist",
        "--data-dir",
        "--epochs",
    ] {
        assert!(stderr.contains(part), "missing '{part}' in: {stderr}");
    }
    let mut again = fashion_run(&data, &run, &["--epochs", "3"]);
    again.extend(["--resume".into(), arg(&run)]);
    let stderr = succeeds(&vit(&root, &again));
    assert!(
        stderr.contains("no run.json (an older run folder)"),
        "{stderr}"
    );
    assert_eq!(metrics_log(&run).len(), 3);
    assert_eq!(
        recorded_flag(&run, "dataset").as_deref(),
        Some("fashion-mnist")
    );

    // Data moved away: said before any work; --data-dir gives its new place.
    let moved = root.join("moved");
    std::fs::rename(&data, &moved).expect("move the data");
    let stderr = fails(&resume(&["--quiet"]), 2);
    assert!(
        stderr.contains(&format!("{} (", data.display())) && stderr.contains("no longer exists"),
        "{stderr}"
    );
    let stderr = succeeds(&resume(&["--data-dir", &arg(&moved), "--quiet"]));
    assert!(stderr.contains("note: --data-dir"), "{stderr}");
    assert_eq!(recorded_flag(&run, "data-dir"), Some(arg(&moved)));
    assert_eq!(metrics_log(&run).len(), 3);
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn eval_and_infer_of_a_run_folder_use_its_data_and_class_names() {
    let root = fresh_dir("runs-eval");
    let data = root.join("data");
    std::fs::create_dir_all(&data).expect("mkdir");
    // 24 test images: neither CIFAR-10's nor the real Fashion-MNIST's test split.
    write_fashion_mnist(&data, 64, 24);
    let run = root.join("run");
    succeeds(&vit(&root, &fashion_run(&data, &run, &["--epochs", "1"])));
    let elsewhere = root.join("elsewhere");
    std::fs::create_dir_all(&elsewhere).expect("mkdir");

    let eval = |checkpoint: &Path| {
        let mut a = words(&["eval", "--json", "--checkpoint"]);
        a.push(arg(checkpoint));
        let out = vit(&elsewhere, &a);
        let stderr = succeeds(&out);
        (json_line(&out), stderr)
    };
    let (folder, stderr) = eval(&run);
    assert!(stderr.contains("best.safetensors"), "{stderr}");
    assert_eq!(folder["images"], 24);
    assert_eq!(folder["classes"][0], "T-shirt/top");
    let (file, _) = eval(&run.join(run_folder::BEST));
    assert_eq!(file["images"], 24);
    assert_eq!(file["accuracy"], folder["accuracy"]);

    let image = root.join("shoe.png");
    image::GrayImage::from_fn(8, 8, |x, y| image::Luma([(x * 30 + y) as u8]))
        .save(&image)
        .expect("png");
    let mut a = words(&["infer", "--json", "--top-k", "10", "--checkpoint"]);
    a.extend([arg(&run), arg(&image)]);
    let out = vit(&elsewhere, &a);
    succeeds(&out);
    let v = json_line(&out);
    let names: Vec<&str> = v["top"]
        .as_array()
        .expect("top")
        .iter()
        .filter_map(|p| p["class"].as_str())
        .collect();
    assert!(names.contains(&"Ankle boot") && names.len() == 10, "{v}");
    let _ = std::fs::remove_dir_all(&root);
}

/// `root/<split>/<class>/<i>.png` with `counts[k]` 8x8 images of class k.
fn write_png_folder(root: &Path, split: &str, counts: &[usize]) {
    for (k, &n) in counts.iter().enumerate() {
        let dir = root.join(split).join(format!("class{k}"));
        std::fs::create_dir_all(&dir).expect("mkdir");
        for i in 0..n {
            let shade = (40 * k + 3 * i) as u8;
            image::RgbImage::from_pixel(8, 8, image::Rgb([shade, 255 - shade, 90]))
                .save(dir.join(format!("{i:02}.png")))
                .expect("png");
        }
    }
}

fn folder_run(data: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    let mut a = words(&["train", "--dataset", "folder", "--in-memory", "--data-dir"]);
    a.push(arg(data));
    a.extend(words(&TINY[..10]));
    a.extend(words(&["--batch-size", "4", "--epochs", "1", "--quiet"]));
    a.extend(words(extra));
    a.extend(["--out".into(), arg(out)]);
    a
}

#[test]
fn a_folder_with_only_train_holds_out_a_stratified_split_that_eval_reuses() {
    let root = fresh_dir("runs-split");
    let data = root.join("data");
    write_png_folder(&data, "train", &[10, 7, 3]);
    // 10%: round(1.0), round(0.7), round(0.3) -> at least 1 each = 3 of 20.
    let run = root.join("run");
    let stderr = succeeds(&vit(&root, &folder_run(&data, &run, &[])));
    assert!(
        stderr.contains("validation: 3 images: 10% of each class of")
            && stderr.contains("training on the other 17"),
        "{stderr}"
    );
    assert_eq!(recorded_flag(&run, "val-split").as_deref(), Some("0.1"));
    let eval = |args: &[String]| vit(&root, &[words(&["eval", "--json"]), args.to_vec()].concat());
    let out = eval(&["--checkpoint".into(), arg(&run)]);
    succeeds(&out);
    assert_eq!(json_line(&out)["images"], 3);
    // Other data than the run's: noted, and taken whole.
    let out = eval(&[
        "--checkpoint".into(),
        arg(&run.join(run_folder::LAST)),
        "--data-dir".into(),
        arg(&data.join("train")),
    ]);
    assert!(succeeds(&out).contains("note: evaluating with --data-dir"));
    assert_eq!(json_line(&out)["images"], 20);
    // Without the run: the folder has nothing to evaluate on unless told which images.
    let alone = root.join("alone.safetensors");
    std::fs::copy(run.join(run_folder::LAST), &alone).expect("copy");
    let mut plain = words(&["--dataset", "folder", "--checkpoint"]);
    plain.extend([arg(&alone), "--data-dir".into(), arg(&data)]);
    let stderr = fails(&eval(&plain), 1);
    assert!(
        stderr.contains("has train/ but no val/ or test/"),
        "{stderr}"
    );
    // An old run folder of an image folder cannot know where the images were.
    std::fs::remove_file(run.join(run_folder::RECORD)).expect("rm");
    let stderr = fails(&eval(&["--checkpoint".into(), arg(&run)]), 2);
    assert!(stderr.contains("--dataset folder --data-dir"), "{stderr}");

    // 25%: round(2.5), round(1.75), round(0.75) = 3 + 2 + 1.
    let stderr = succeeds(&vit(
        &root,
        &folder_run(&data, &root.join("quarter"), &["--val-split", "0.25"]),
    ));
    assert!(
        stderr.contains("validation: 6 images: 25% of each class")
            && stderr.contains("training on the other 14"),
        "{stderr}"
    );
    // A folder with val/ validates on it; --val-split there is a usage error.
    write_png_folder(&data, "val", &[2, 2, 2]);
    let out = vit(
        &root,
        &folder_run(&data, &root.join("val"), &["--val-split", "0.2"]),
    );
    let stderr = fails(&out, 2);
    assert!(
        stderr.contains("--val-split") && stderr.contains("which validation uses"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn empty_data_folders_name_the_folder_and_what_was_expected() {
    let root = fresh_dir("runs-empty");
    let train = |data: &Path| {
        let mut a = words(&["train", "--dataset", "folder", "--quiet", "--data-dir"]);
        a.push(arg(data));
        fails(&vit(&root, &a), 1)
    };
    let empty_class = root.join("a");
    std::fs::create_dir_all(empty_class.join("train/cat")).expect("mkdir");
    let stderr = train(&empty_class);
    let folder = empty_class.join("train");
    for part in [
        format!("{}: no images", folder.display()),
        "1 class subfolders (cat)".into(),
        format!("expected {}/<class>/<image>.png", folder.display()),
    ] {
        assert!(stderr.contains(&part), "missing '{part}' in: {stderr}");
    }
    let no_classes = root.join("b");
    std::fs::create_dir_all(&no_classes).expect("mkdir");
    let stderr = train(&no_classes);
    assert!(
        stderr.contains("no class subfolders") && stderr.contains(&arg(&no_classes)),
        "{stderr}"
    );
    // One level too high: the "classes" hold folders.
    write_png_folder(&root.join("c"), "photos", &[2, 2]);
    let stderr = train(&root.join("c"));
    assert!(stderr.contains("they hold folders, not images"), "{stderr}");
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn held_out_split_is_stratified_deterministic_and_disjoint() {
    let counts = [10usize, 7, 3, 1, 40];
    let mut list = FileList {
        class_names: (0..counts.len()).map(|k| format!("c{k}")).collect(),
        files: Vec::new(),
        labels: Vec::new(),
    };
    for (k, &n) in counts.iter().enumerate() {
        for i in 0..n {
            list.files.push(PathBuf::from(format!("c{k}/{i}.png")));
            list.labels.push(k as u32);
        }
    }
    for (fraction, want) in [
        (0.1, [1, 1, 1, 0, 4]),
        (0.25, [3, 2, 1, 0, 10]),
        (0.9, [9, 6, 2, 0, 36]),
    ] {
        let (kept, held) = hold_out(&list, fraction);
        for (k, &n) in want.iter().enumerate() {
            let count = held.labels.iter().filter(|&&l| l == k as u32).count();
            assert_eq!(count, n, "class {k} at {fraction}");
        }
        assert_eq!(kept.files.len() + held.files.len(), list.files.len());
        let mut all: Vec<_> = kept.files.iter().chain(&held.files).cloned().collect();
        all.sort();
        let mut expected = list.files.clone();
        expected.sort();
        assert_eq!(all, expected, "not a partition at {fraction}");
        // Each part keeps the folder's order (and so the loader's).
        let position = |p: &PathBuf| list.files.iter().position(|q| q == p);
        for part in [&kept, &held] {
            let at: Vec<_> = part.files.iter().map(position).collect();
            assert!(
                at.windows(2).all(|w| w[0] < w[1]),
                "order changed at {fraction}"
            );
            for (f, &l) in part.files.iter().zip(&part.labels) {
                assert!(f.starts_with(format!("c{l}")), "{f:?} labelled {l}");
            }
        }
        let (_, again) = hold_out(&list, fraction);
        assert_eq!(again.files, held.files, "not deterministic");
    }
    // Pinned: run folders record only the fraction, so the choice must never change.
    let (_, held) = hold_out(&list, 0.25);
    let first: Vec<_> = held
        .files
        .iter()
        .take(6)
        .map(|p| p.display().to_string())
        .collect();
    assert_eq!(
        first, PINNED_QUARTER,
        "the split changed: old runs would validate on others"
    );
}

const PINNED_QUARTER: [&str; 6] = [
    "c0/2.png", "c0/3.png", "c0/7.png", "c1/1.png", "c1/6.png", "c2/2.png",
];
