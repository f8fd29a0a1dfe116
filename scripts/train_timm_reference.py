"""Train timm's VisionTransformer on Fashion-MNIST with vit-wgpu's recipe, for seed-to-seed
comparisons of final accuracy (issue 10: is the gap between the two seed noise?).

    pip install torch timm
    python3 scripts/train_timm_reference.py --seed 0 [--epochs 8] [--threads 1]

Same as `vit-wgpu train --preset micro --dataset fashion-mnist --epochs 8 --lr 2e-3
--weight-decay 0.05 --seed S`:
- model: 28x28x1, patch 4, D 64, 2 layers, 4 heads, FFN 256 GELU, class token, linear head,
  LayerNorm eps 1e-6, no dropout; timm's default initialisation;
- data: pixels/255, normalised with mean 0.5 and std 0.5; training augmentation is
  torchvision's RandomCrop(28, padding=4) (zero padding before normalisation) and a
  horizontal flip with probability 0.5; a fresh permutation per epoch, last partial batch
  dropped; evaluation on the 10,000 test images;
- optimiser: AdamW (betas 0.9/0.999, eps 1e-8), weight decay on weight matrices only,
  gradient-norm clipping at 1.0, linear warmup over 5% of the steps then cosine, with
  vit-wgpu's step formula (src/train/schedule.rs).
Prints one JSON line with the test accuracy at the end.

`--patch-init vit-wgpu` initialises the patch embedding as vit-wgpu did before it matched
timm (weight trunc_normal(0.02), bias 0) instead of PyTorch's Conv2d default that timm keeps
(uniform in +-1/sqrt(fan_in) for both): the one difference of initialisation found between them.
"""

import argparse
import gzip
import json
import math
import os
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from functools import partial
from timm.models.vision_transformer import VisionTransformer

SEARCH = ["data/fashion-mnist", "/usr/share/datasets/fashion-mnist"]


def read_idx(name):
    for d in SEARCH:
        for candidate in (os.path.join(d, name), os.path.join(d, name + ".gz")):
            if os.path.exists(candidate):
                opener = gzip.open if candidate.endswith(".gz") else open
                with opener(candidate, "rb") as f:
                    raw = f.read()
                dims = raw[3]
                shape = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims)]
                return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)
    raise SystemExit(f"{name} not found in {SEARCH} (Debian: apt-get install dataset-fashion-mnist)")


def lr_at(step, base, warmup, total):
    if warmup > 0 and step <= warmup:
        return base * step / warmup
    if total <= warmup:
        return base
    return base * 0.5 * (1.0 + math.cos(math.pi * (step - 1 - warmup) / (total - warmup)))


def augment(images, gen, pad=4):
    """RandomCrop(28, padding=pad) with zero padding + horizontal flip, per image."""
    n, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    flip = torch.rand(n, generator=gen) < 0.5
    out = torch.empty_like(images)
    for i in range(n):
        crop = padded[i, dy[i]: dy[i] + h, dx[i]: dx[i] + w]
        out[i] = crop.flip(-1) if flip[i] else crop
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--patch-init", choices=["timm", "vit-wgpu"], default="timm")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    gen = torch.Generator().manual_seed(a.seed + 1)

    def prep(x):
        return (torch.from_numpy(x.astype(np.float32)) / 255.0 - 0.5) / 0.5

    train_x = torch.from_numpy(read_idx("train-images-idx3-ubyte").astype(np.float32)) / 255.0
    train_y = torch.from_numpy(read_idx("train-labels-idx1-ubyte").astype(np.int64))
    test_x = prep(read_idx("t10k-images-idx3-ubyte"))
    test_y = torch.from_numpy(read_idx("t10k-labels-idx1-ubyte").astype(np.int64))

    model = VisionTransformer(
        img_size=28, patch_size=4, in_chans=1, num_classes=10, embed_dim=64, depth=2,
        num_heads=4, mlp_ratio=4.0, qkv_bias=True, class_token=True, global_pool="token",
        act_layer=nn.GELU, norm_layer=partial(nn.LayerNorm, eps=1e-6),
    )
    if a.patch_init == "vit-wgpu":
        with torch.no_grad():
            nn.init.trunc_normal_(model.patch_embed.proj.weight, std=0.02)
            nn.init.zeros_(model.patch_embed.proj.bias)
    decay = [t for n, t in model.named_parameters() if n.endswith(".weight") and t.dim() >= 2]
    rest = [t for n, t in model.named_parameters() if not (n.endswith(".weight") and t.dim() >= 2)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": a.weight_decay},
                             {"params": rest, "weight_decay": 0.0}], lr=a.lr, eps=1e-8)
    steps_per_epoch = len(train_x) // a.batch_size
    total = steps_per_epoch * a.epochs
    warmup = total // 20
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_at(s + 1, 1.0, warmup, total))

    start = time.time()
    for epoch in range(a.epochs):
        model.train()
        order = torch.randperm(len(train_x), generator=gen)
        seen = correct = 0
        loss_sum = 0.0
        for b in range(steps_per_epoch):
            idx = order[b * a.batch_size:(b + 1) * a.batch_size]
            x = ((augment(train_x[idx], gen) - 0.5) / 0.5).unsqueeze(1)
            y = train_y[idx]
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if a.clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), a.clip)
            opt.step()
            sched.step()
            loss_sum += loss.item() * len(y)
            correct += (logits.argmax(1) == y).sum().item()
            seen += len(y)
        acc = evaluate(model, test_x, test_y)
        print(f"epoch {epoch + 1}/{a.epochs}: train loss {loss_sum / seen:.4f} acc {correct / seen:.4f}"
              f" | test acc {acc:.4f} | {time.time() - start:.0f}s", flush=True)
    print(json.dumps({"framework": "timm", "seed": a.seed, "epochs": a.epochs,
                      "patch_init": a.patch_init, "test_accuracy": acc}))


@torch.no_grad()
def evaluate(model, x, y):
    model.eval()
    correct = 0
    for i in range(0, len(x), 500):
        correct += (model(x[i:i + 500].unsqueeze(1)).argmax(1) == y[i:i + 500]).sum().item()
    return correct / len(x)


if __name__ == "__main__":
    main()
