#!/usr/bin/env python3
"""Write a training-trajectory fixture for `vit-wgpu verify`: timm's VisionTransformer in
float64 trained for N AdamW steps with the project's schedule, on batches stored in the file
(llm.c's test_gpt2 "a few optimizer steps' losses", carried to the final weights).

    pip install torch timm safetensors
    python3 scripts/make_trajectory_fixture.py --out tests/fixtures/trajectory_small.safetensors

The optimiser is written out here, independently of the Rust code, as the project defines it:
- learning rate of step s (1-based) of T, warmup W: lr*s/W for s <= W, then cosine
  0.5*lr*(1 + cos(pi*(s-1-W)/(T-W))) (the last step's rate is above zero);
- global gradient-norm clipping: g *= min(1, max_norm / (||g|| + 1e-6));
- AdamW (torch.optim.AdamW's update): p -= lr*wd*p on weight matrices only (not biases, norms,
  cls_token, pos_embed), then p -= lr * m_hat / (sqrt(v_hat) + eps);
- dropout off; loss = mean cross-entropy over the batch.

Tensors (float32 unless noted): the initial parameters under their timm names;
trajectory.images [S,B,C,H,W]; trajectory.labels [S,B] int64; trajectory.lr [S];
trajectory.loss [S] (the loss of each step, before its update); final.<name> (parameters after
the last step). Metadata: the model config as make_parity_fixture.py writes it, plus
steps lr warmup weight_decay max_grad_norm beta1 beta2 eps.
"""
import argparse
import math
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file
from timm.models.vision_transformer import VisionTransformer


def lr_at(step, base, warmup, total):
    if warmup > 0 and step <= warmup:
        return base * step / warmup
    if total <= warmup:
        return base
    progress = (step - 1 - warmup) / (total - warmup)
    return base * 0.5 * (1.0 + math.cos(math.pi * progress))


def decays(name, t):
    return name.endswith(".weight") and t.dim() >= 2


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--img", type=int, nargs=2, default=[16, 16], metavar=("H", "W"))
    p.add_argument("--patch", type=int, default=4)
    p.add_argument("--chans", type=int, default=1)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--dim", type=int, default=32)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--mlp-hidden", type=int, default=64)
    p.add_argument("--act", choices=["gelu", "relu"], default="gelu")
    p.add_argument("--ln-eps", type=float, default=1e-6)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=4)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--max-grad-norm", type=float, default=1.0)
    p.add_argument("--beta1", type=float, default=0.9)
    p.add_argument("--beta2", type=float, default=0.999)
    p.add_argument("--eps", type=float, default=1e-8)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()

    torch.manual_seed(a.seed)
    h, w = a.img
    model = VisionTransformer(
        img_size=(h, w), patch_size=a.patch, in_chans=a.chans, num_classes=a.classes,
        embed_dim=a.dim, depth=a.depth, num_heads=a.heads, mlp_ratio=a.mlp_hidden / a.dim,
        qkv_bias=True, class_token=True, global_pool="token",
        act_layer=nn.GELU if a.act == "gelu" else nn.ReLU,
        norm_layer=partial(nn.LayerNorm, eps=a.ln_eps),
        drop_rate=0.0, pos_drop_rate=0.0, proj_drop_rate=0.0, attn_drop_rate=0.0,
        dynamic_img_size=False,
    ).double()
    assert model.blocks[0].mlp.fc1.out_features == a.mlp_hidden
    # Perturb every parameter so none is trivially 0 or 1 (norms, biases, cls and pos too).
    with torch.no_grad():
        for name, t in model.named_parameters():
            scale = 0.1 if t.dim() <= 1 or "embed" in name or "token" in name else 0.05
            t.add_(scale * torch.randn_like(t))
    initial = {k: v.detach().float().contiguous() for k, v in model.state_dict().items()}
    # Train from exactly the float32 values the file stores.
    with torch.no_grad():
        for name, t in model.named_parameters():
            t.copy_(initial[name].double())

    # Separable data: a class-dependent pattern plus noise, so the loss really falls.
    labels = torch.randint(0, a.classes, (a.steps, a.batch), dtype=torch.int64)
    patterns = torch.randn(a.classes, a.chans, h, w, dtype=torch.float64)
    images = patterns[labels] + 0.5 * torch.randn(a.steps, a.batch, a.chans, h, w, dtype=torch.float64)
    images = images.float().double()

    params = dict(model.named_parameters())
    m = {k: torch.zeros_like(t) for k, t in params.items()}
    v = {k: torch.zeros_like(t) for k, t in params.items()}
    losses, lrs = [], []
    for s in range(1, a.steps + 1):
        lr = lr_at(s, a.lr, a.warmup, a.steps)
        model.zero_grad()
        loss = F.cross_entropy(model(images[s - 1]), labels[s - 1])
        loss.backward()
        losses.append(loss.item())
        lrs.append(lr)
        with torch.no_grad():
            norm = math.sqrt(sum(float((t.grad ** 2).sum()) for t in params.values()))
            scale = min(1.0, a.max_grad_norm / (norm + 1e-6)) if a.max_grad_norm > 0 else 1.0
            bc1, bc2 = 1 - a.beta1 ** s, 1 - a.beta2 ** s
            for name, t in params.items():
                g = t.grad * scale
                m[name].mul_(a.beta1).add_((1 - a.beta1) * g)
                v[name].mul_(a.beta2).add_((1 - a.beta2) * g * g)
                if decays(name, t):
                    t.sub_(lr * a.weight_decay * t)
                t.sub_(lr * (m[name] / bc1) / ((v[name] / bc2).sqrt() + a.eps))
        print(f"step {s:3d}  lr {lr:.6f}  loss {loss.item():.6f}  |g| {norm:.4f}")

    out = dict(initial)
    out["trajectory.images"] = images.float().contiguous()
    out["trajectory.labels"] = labels
    out["trajectory.lr"] = torch.tensor(lrs, dtype=torch.float32)
    out["trajectory.loss"] = torch.tensor(losses, dtype=torch.float32)
    for name, t in params.items():
        out[f"final.{name}"] = t.detach().float().contiguous()
    meta = dict(img_h=h, img_w=w, patch=a.patch, chans=a.chans, classes=a.classes, dim=a.dim,
                depth=a.depth, heads=a.heads, mlp_hidden=a.mlp_hidden, act=a.act, ln_eps=a.ln_eps,
                batch=a.batch, seed=a.seed, steps=a.steps, lr=a.lr, warmup=a.warmup,
                weight_decay=a.weight_decay, max_grad_norm=a.max_grad_norm, beta1=a.beta1,
                beta2=a.beta2, eps=a.eps, generator="scripts/make_trajectory_fixture.py",
                torch=torch.__version__)
    save_file(out, a.out, metadata={k: str(v) for k, v in meta.items()})
    print(f"{a.out}: {a.steps} steps, loss {losses[0]:.6f} -> {losses[-1]:.6f}")


if __name__ == "__main__":
    main()
