#!/usr/bin/env python3
"""Write a debug-state file for `vit-wgpu verify` of a model too large to store: its weights
come from a rule both this script and vit-wgpu compute exactly, and only samples of each
gradient are kept. timm's VisionTransformer runs in float64.

    pip install torch timm safetensors
    python3 scripts/make_hashed_parity_fixture.py --out tests/fixtures/parity_vitb_width_hashed.safetensors

The default is ViT-B's width (D 768, 12 heads, MLP 3072) at depth 6 on 32x32 images with
16x16 patches: 43.7M parameters, 175 MB in float32, more than WebGPU's 128 MiB binding.

The weight rule (metadata `weights_rule`; `weights.<name>` = "index center log2_amplitude"):
    key   = index * 2^32 + element (u64; element = flat row-major index in timm's tensor)
    z     = key + seed * 0x9E3779B97F4A7C15                       (mod 2^64)
    z     = z + 0x9E3779B97F4A7C15; z = (z ^ z >> 30) * 0xBF58476D1CE4E5B9
    z     = (z ^ z >> 27) * 0x94D049BB133111EB; z = z ^ z >> 31   (splitmix64, mod 2^64)
    k     = 2 * (z >> 40) + 1 - 2^24                              (odd, |k| < 2^24)
    value = float32(center + k * 2^(log2_amplitude - 24))        (exact in float64, one rounding)

Tensors: input.images [B,C,H,W]; input.labels [B] int64; expected.logits [B,K];
expected.loss [1]; per parameter expected.grad_norm.<name> [1] (the float64 norm),
expected.grad_samples.<name> [S] and expected.grad_sample_index.<name> [S] int64 (flat
indices; every element when the tensor has at most --samples of them).
Metadata: the model config as make_parity_fixture.py writes it, plus the rule above.
"""
import argparse
from functools import partial

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file
from timm.models.vision_transformer import VisionTransformer

MASK = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15

RULE = ("splitmix64(index * 2^32 + element + seed * 0x9E3779B97F4A7C15) >> 40 = u; "
        "k = 2u + 1 - 2^24; value = float32(center + k * 2^(log2_amplitude - 24)); "
        "weights.<name> = 'index center log2_amplitude'")


def hashed(index, n, seed, center, log2_amplitude):
    """The rule's values of elements 0..n of tensor `index`, as float32."""
    key = (np.uint64(index) << np.uint64(32)) + np.arange(n, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = key + np.uint64((seed * GOLDEN) & MASK) + np.uint64(GOLDEN)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    k = 2 * (z >> np.uint64(40)).astype(np.int64) + 1 - (1 << 24)
    exact = center + k.astype(np.float64) * 2.0 ** (log2_amplitude - 24)
    return exact.astype(np.float32)


def amplitude(name):
    """(center, log2 amplitude) per tensor: activations of order one through the depth."""
    if name.endswith("norm1.weight") or name.endswith("norm2.weight") or name == "norm.weight":
        return 1, -2
    if "attn.proj" in name or "mlp.fc2" in name:
        return 0, -5
    if name in ("cls_token", "pos_embed") or name.endswith(".bias"):
        return 0, -3
    return 0, -4


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--img", type=int, nargs=2, default=[32, 32], metavar=("H", "W"))
    p.add_argument("--patch", type=int, default=16)
    p.add_argument("--chans", type=int, default=3)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--depth", type=int, default=6)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--mlp-hidden", type=int, default=3072)
    p.add_argument("--act", choices=["gelu", "relu"], default="gelu")
    p.add_argument("--ln-eps", type=float, default=1e-6)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--samples", type=int, default=2048, help="gradient elements kept per tensor")
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

    meta = dict(img_h=h, img_w=w, patch=a.patch, chans=a.chans, classes=a.classes, dim=a.dim,
                depth=a.depth, heads=a.heads, mlp_hidden=a.mlp_hidden, act=a.act, ln_eps=a.ln_eps,
                batch=a.batch, seed=a.seed, weights_rule=RULE, weights_seed=a.seed,
                generator="scripts/make_hashed_parity_fixture.py", torch=torch.__version__)
    with torch.no_grad():
        for index, (name, t) in enumerate(model.named_parameters()):
            center, log2a = amplitude(name)
            values = hashed(index, t.numel(), a.seed, center, log2a).reshape(tuple(t.shape))
            t.copy_(torch.from_numpy(values.astype(np.float64)))
            meta[f"weights.{name}"] = f"{index} {center} {log2a}"

    rng = np.random.default_rng(a.seed)
    images = torch.from_numpy(rng.standard_normal((a.batch, a.chans, h, w)).astype(np.float32))
    labels = torch.from_numpy(rng.integers(0, a.classes, a.batch).astype(np.int64))
    model.zero_grad()
    logits = model(images.double())
    loss = F.cross_entropy(logits, labels)
    loss.backward()

    out = {
        "input.images": images.contiguous(),
        "input.labels": labels,
        "expected.logits": logits.detach().float().contiguous(),
        "expected.loss": loss.detach().float().reshape(1),
    }
    for name, t in model.named_parameters():
        g = t.grad.reshape(-1)
        n = g.numel()
        if n <= a.samples:
            index = np.arange(n, dtype=np.int64)
        else:
            index = np.sort(rng.choice(n, a.samples, replace=False)).astype(np.int64)
        out[f"expected.grad_norm.{name}"] = g.norm().float().reshape(1)
        out[f"expected.grad_samples.{name}"] = g[torch.from_numpy(index)].float().contiguous()
        out[f"expected.grad_sample_index.{name}"] = torch.from_numpy(index)
    params = sum(t.numel() for t in model.parameters())
    meta["parameters"] = params
    save_file(out, a.out, metadata={k: str(v) for k, v in meta.items()})
    print(f"{a.out}: {params} parameters ({4 * params / 2**20:.1f} MiB in float32), "
          f"loss {loss.item():.6f}")


if __name__ == "__main__":
    main()
