#!/usr/bin/env python3
"""The PyTorch side of `vit-wgpu bench`: timm's VisionTransformer with the same presets,
batch, step (forward + cross-entropy + backward + AdamW, or a forward under
torch.inference_mode) and FLOP formula, on the CPU with 2 threads (the cores lavapipe uses).

    python3 scripts/bench_pytorch.py --preset tiny --batch-size 64 --json
    python3 scripts/bench_pytorch.py --side-by-side     # both programs, every preset and mode,
                                                        # a Markdown table (README "Results")

`--json` prints one line with the keys of `vit-wgpu bench --json`. There, `ceiling_gflops`
is the adapter's FMA ceiling (shaders/peak_fma.wgsl); here it is the same kind of in-run
ceiling for PyTorch: torch.mm on 2048x2048 float32 with the same threads.

Model FLOPs (analytic, matmuls only, 2 per multiply-add; src/cli/commands.rs
`forward_matmul_flops_per_image` counts the same): patch embedding 2*P*(C*p*p)*D; per layer
QKV 2*N*D*3D, QK^T and PV 4*N*N*D, projection 2*N*D*D, MLP 4*N*D*F; head 2*D*K or, for the
MLP head, 2*D*H + 2*H*K. Training counts 3x the forward, inference 1x.
"""
import argparse
import json
import statistics
import subprocess
import sys
import time
from functools import partial

PRESETS = {
    # image (h, w, c), patch, dim, depth, heads, mlp hidden, act, head hidden (None: linear), dropout, eps
    "labml": dict(img=(32, 32, 3), patch=4, dim=512, depth=6, heads=8, mlp=2048, act="relu",
                  head_hidden=2048, dropout=0.1, eps=1e-5),
    "tiny": dict(img=(32, 32, 3), patch=4, dim=192, depth=6, heads=3, mlp=768, act="gelu",
                 head_hidden=None, dropout=0.0, eps=1e-6),
    "micro": dict(img=(28, 28, 1), patch=4, dim=64, depth=2, heads=4, mlp=256, act="gelu",
                  head_hidden=None, dropout=0.0, eps=1e-6),
}
CLASSES = 10
# The side-by-side set: preset, batch size.
SIDE_BY_SIDE = [("micro", 64), ("tiny", 64), ("labml", 16)]


def forward_matmul_flops_per_image(p):
    h, w, c = p["img"]
    patches = (h // p["patch"]) * (w // p["patch"])
    n, d, f = 1 + patches, p["dim"], p["mlp"]
    embed = 2 * patches * c * p["patch"] ** 2 * d
    layer = 2 * n * d * 3 * d + 4 * n * n * d + 2 * n * d * d + 4 * n * d * f
    hh = p["head_hidden"]
    head = 2 * d * CLASSES if hh is None else 2 * d * hh + 2 * hh * CLASSES
    return embed + p["depth"] * layer + head


def build_model(p):
    import torch.nn as nn
    from timm.models.vision_transformer import VisionTransformer

    h, w, c = p["img"]
    model = VisionTransformer(
        img_size=(h, w), patch_size=p["patch"], in_chans=c, num_classes=CLASSES,
        embed_dim=p["dim"], depth=p["depth"], num_heads=p["heads"], mlp_ratio=p["mlp"] / p["dim"],
        qkv_bias=True, class_token=True, global_pool="token",
        act_layer=nn.GELU if p["act"] == "gelu" else nn.ReLU,
        norm_layer=partial(nn.LayerNorm, eps=p["eps"]),
        drop_rate=0.0, pos_drop_rate=0.0, proj_drop_rate=p["dropout"], attn_drop_rate=0.0,
    )
    if p["head_hidden"] is not None:
        # the seed's pre-training head, as vit-wgpu's `mlp` head
        model.head = nn.Sequential(nn.Linear(p["dim"], p["head_hidden"]), nn.ReLU(),
                                   nn.Linear(p["head_hidden"], CLASSES))
    return model


def matmul_ceiling(torch, size=2048, runs=5):
    a = torch.randn(size, size)
    b = torch.randn(size, size)
    torch.mm(a, b)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - t0)
    return 2 * size ** 3 / statistics.median(times)


def bench(preset, batch, mode, steps, warmup, threads):
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    p = PRESETS[preset]
    model = build_model(p)
    h, w, c = p["img"]
    images = torch.randn(batch, c, h, w)
    labels = torch.arange(batch) % CLASSES
    times = []
    if mode == "train":
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        for i in range(warmup + steps):
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(images), labels)
            loss.backward()
            opt.step()
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    else:
        model.eval()
        with torch.inference_mode():
            for i in range(warmup + steps):
                t0 = time.perf_counter()
                model(images)
                if i >= warmup:
                    times.append(time.perf_counter() - t0)
    # the ceiling right after the steps, as `vit-wgpu bench` does
    ceiling = matmul_ceiling(torch)
    median = statistics.median(times)
    ips = batch / median
    flops = (3 if mode == "train" else 1) * forward_matmul_flops_per_image(p)
    model_gflops = flops * ips * 1e-9
    return {
        "preset": preset, "mode": mode, "batch_size": batch, "images_per_second": ips,
        "median_step_seconds": median, "steps": steps,
        "adapter": f"PyTorch {torch.__version__} CPU, {threads} threads",
        "profile_seconds": {},
        "model_gflop_per_image": flops * 1e-9, "model_gflops": model_gflops,
        "ceiling_gflops": ceiling * 1e-9, "of_ceiling": model_gflops / (ceiling * 1e-9),
    }


def run_vit_wgpu(program, preset, batch, mode, steps):
    cmd = program.split() + ["bench", "--preset", preset,
           "--batch-size", str(batch), "--mode", mode, "--steps", str(steps), "--json"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def side_by_side(program, presets, steps, threads, batch_size=None):
    print("| preset, batch, mode | vit-wgpu img/s | PyTorch img/s | ratio | vit-wgpu model GFLOP/s "
          "(of FMA ceiling) | PyTorch model GFLOP/s (of its sgemm) |")
    print("|---|---|---|---|---|---|")
    for preset, batch in SIDE_BY_SIDE:
        if preset not in presets:
            continue
        batch = batch_size or batch
        for mode in ("train", "infer"):
            ours = run_vit_wgpu(program, preset, batch, mode, steps)
            theirs = bench(preset, batch, mode, steps, 2, threads)
            print(f"| {preset}, {batch}, {mode} | {ours['images_per_second']:.1f} | "
                  f"{theirs['images_per_second']:.1f} | "
                  f"{ours['images_per_second'] / theirs['images_per_second']:.2f}x | "
                  f"{ours['model_gflops']:.1f} ({ours['of_ceiling']:.2f} of "
                  f"{ours['ceiling_gflops']:.0f}) | {theirs['model_gflops']:.1f} "
                  f"({theirs['of_ceiling']:.2f} of {theirs['ceiling_gflops']:.0f}) |", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="labml")
    ap.add_argument("--batch-size", type=int, default=None,
                    help="default 64; with --side-by-side, each preset's batch (micro/tiny 64, labml 16)")
    ap.add_argument("--mode", choices=["train", "infer"], default="train")
    ap.add_argument("--steps", type=int, default=10, help="timed steps (after the warm-up)")
    ap.add_argument("--warmup-steps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", action="store_true", help="one machine-readable JSON line")
    ap.add_argument("--side-by-side", action="store_true",
                    help="run `cargo run --release -- bench --json` and this for micro/64, tiny/64 "
                         "and labml/16, train and infer, and print a Markdown table")
    ap.add_argument("--presets", default="micro,tiny,labml",
                    help="with --side-by-side: which of micro,tiny,labml (comma-separated)")
    ap.add_argument("--vit-wgpu", default="cargo run --release --quiet --",
                    help="with --side-by-side: how to run vit-wgpu (e.g. target/release/vit-wgpu)")
    a = ap.parse_args()
    if a.side_by_side:
        side_by_side(a.vit_wgpu, a.presets.split(","), a.steps, a.threads, a.batch_size)
        return
    r = bench(a.preset, a.batch_size or 64, a.mode, a.steps, a.warmup_steps, a.threads)
    if a.json:
        print(json.dumps(r))
    else:
        print(f"{r['preset']} {r['mode']} batch {r['batch_size']}: {r['images_per_second']:.1f} images/s, "
              f"median step {r['median_step_seconds'] * 1e3:.1f} ms over {r['steps']} steps on {r['adapter']}")
        print(f"model {r['model_gflops']:.1f} GFLOP/s ({r['model_gflop_per_image']:.3f} GFLOP per image), "
              f"{r['of_ceiling']:.2f} of the in-run matmul ceiling {r['ceiling_gflops']:.1f} GFLOP/s")


if __name__ == "__main__":
    sys.exit(main())
