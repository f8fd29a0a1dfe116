#!/usr/bin/env python3
"""Write a debug-state file for `vit-wgpu verify`: timm's VisionTransformer in float64 with
every parameter perturbed, a batch, the expected logits, loss and every parameter's gradient.

    pip install torch timm safetensors
    python3 scripts/make_parity_fixture.py --out tests/fixtures/parity_micro_gelu.safetensors \
        --img 28 28 --patch 4 --chans 1 --dim 64 --depth 2 --heads 4 --mlp-hidden 256 --act gelu

Tensors (float32 unless noted): every parameter under its timm name; input.images [B,C,H,W];
input.labels [B] int64; expected.logits [B,K]; expected.loss [1]; expected.grad.<name>.
Metadata (strings): img_h img_w patch chans classes dim depth heads mlp_hidden act ln_eps batch
(and pos_grid_h/pos_grid_w when --pos-grid makes pos_embed's grid differ from the image's, in
which case the expected values are those of timm after resample_abs_pos_embed).

The options of timm's ViT descendants (issue 33), written to the metadata under the names
src/model/config.rs reads (only when they differ from the original ViT):
    --no-class-token --global-pool avg --fc-norm true|false --no-embed-class
    --no-qkv-bias --init-values V (LayerScale) --reg-tokens R --distilled (VisionTransformerDistilled;
    the loss is the cross-entropy of the mean of its two heads' logits, what timm returns
    outside distillation training) --pre-norm --qk-norm --act quick_gelu
e.g. the fixtures in tests/fixtures/options/ (scripts/make_option_fixtures.sh).
"""
import argparse
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed
from timm.layers import QuickGELU
from timm.models.deit import VisionTransformerDistilled
from timm.models.vision_transformer import VisionTransformer


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--img", type=int, nargs=2, default=[28, 28], metavar=("H", "W"))
    p.add_argument("--patch", type=int, default=4)
    p.add_argument("--chans", type=int, default=1)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--mlp-hidden", type=int, default=256)
    p.add_argument("--act", choices=["gelu", "relu", "quick_gelu"], default="gelu")
    p.add_argument("--ln-eps", type=float, default=1e-6)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pos-grid", type=int, nargs=2, default=None, metavar=("GH", "GW"),
                   help="store pos_embed on this patch grid; the model resamples it to the image's grid")
    p.add_argument("--no-class-token", action="store_true")
    p.add_argument("--global-pool", choices=["token", "avg"], default="token")
    p.add_argument("--fc-norm", choices=["true", "false"], default=None)
    p.add_argument("--no-embed-class", action="store_true")
    p.add_argument("--init-values", type=float, default=None)
    p.add_argument("--reg-tokens", type=int, default=0)
    p.add_argument("--distilled", action="store_true")
    p.add_argument("--pre-norm", action="store_true")
    p.add_argument("--qk-norm", action="store_true")
    p.add_argument("--no-qkv-bias", action="store_true")
    a = p.parse_args()

    torch.manual_seed(a.seed)
    h, w = a.img
    fc_norm = None if a.fc_norm is None else a.fc_norm == "true"
    model = (VisionTransformerDistilled if a.distilled else VisionTransformer)(
        img_size=(h, w), patch_size=a.patch, in_chans=a.chans, num_classes=a.classes,
        embed_dim=a.dim, depth=a.depth, num_heads=a.heads, mlp_ratio=a.mlp_hidden / a.dim,
        qkv_bias=not a.no_qkv_bias, class_token=not a.no_class_token, global_pool=a.global_pool,
        fc_norm=fc_norm, no_embed_class=a.no_embed_class, init_values=a.init_values,
        reg_tokens=a.reg_tokens, pre_norm=a.pre_norm, qk_norm=a.qk_norm,
        act_layer={"gelu": nn.GELU, "relu": nn.ReLU, "quick_gelu": QuickGELU}[a.act],
        norm_layer=partial(nn.LayerNorm, eps=a.ln_eps),
        drop_rate=0.0, pos_drop_rate=0.0, proj_drop_rate=0.0, attn_drop_rate=0.0,
        dynamic_img_size=False,
    ).double()
    assert model.blocks[0].mlp.fc1.out_features == a.mlp_hidden

    # Perturb every parameter so none is trivially 0 or 1.
    with torch.no_grad():
        for name, t in model.named_parameters():
            scale = 0.1 if t.dim() <= 1 or "embed" in name or "token" in name else 0.05
            t.add_(scale * torch.randn_like(t))

    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    grid = (h // a.patch, w // a.patch)
    if a.pos_grid is not None and tuple(a.pos_grid) != grid:
        # A pos_embed learned on another grid: resample it the way timm does when loading.
        # the prefix tokens with a position of their own (none with --no-embed-class)
        prefix = 0 if model.no_embed_class else model.num_prefix_tokens
        stored = 0.1 * torch.randn(1, prefix + a.pos_grid[0] * a.pos_grid[1], a.dim, dtype=torch.float64)
        state["pos_embed"] = stored
        with torch.no_grad():
            model.pos_embed.copy_(resample_abs_pos_embed(stored.float(), new_size=list(grid),
                                                         old_size=list(a.pos_grid), num_prefix_tokens=prefix).double())

    images = torch.randn(a.batch, a.chans, h, w, dtype=torch.float64)
    labels = torch.randint(0, a.classes, (a.batch,), dtype=torch.int64)
    model.zero_grad()
    logits = model(images)
    loss = F.cross_entropy(logits, labels)
    loss.backward()

    out = {k: v.float().contiguous() for k, v in state.items()}
    out["input.images"] = images.float().contiguous()
    out["input.labels"] = labels
    out["expected.logits"] = logits.detach().float().contiguous()
    out["expected.loss"] = loss.detach().float().reshape(1)
    for name, t in model.named_parameters():
        g = t.grad
        if name.endswith("attn.k_norm.bias"):
            # Exactly zero: a bias on every key adds q.b to a whole softmax row. timm's value
            # is rounding noise (~1e-18) that no relative error can be measured against.
            g = torch.zeros_like(g)
        out[f"expected.grad.{name}"] = g.float().contiguous()
    meta = dict(img_h=h, img_w=w, patch=a.patch, chans=a.chans, classes=a.classes, dim=a.dim,
                depth=a.depth, heads=a.heads, mlp_hidden=a.mlp_hidden, act=a.act, ln_eps=a.ln_eps,
                batch=a.batch, seed=a.seed, generator="scripts/make_parity_fixture.py",
                torch=torch.__version__)
    if a.pos_grid is not None:
        meta["pos_grid_h"], meta["pos_grid_w"] = a.pos_grid
    options = dict(class_token="false" if a.no_class_token else None,
                   global_pool="avg" if a.global_pool == "avg" else None,
                   fc_norm="true" if type(model.fc_norm).__name__ != "Identity" else None,
                   no_embed_class="true" if a.no_embed_class else None,
                   init_values=a.init_values,
                   reg_tokens=a.reg_tokens or None,
                   distilled="true" if a.distilled else None,
                   pre_norm="true" if a.pre_norm else None,
                   qk_norm="true" if a.qk_norm else None,
                   qkv_bias="false" if a.no_qkv_bias else None)
    meta.update({k: v for k, v in options.items() if v is not None})
    save_file(out, a.out, metadata={k: str(v) for k, v in meta.items()})
    print(f"{a.out}: loss {loss.item():.6f}, {sum(t.numel() for t in out.values())} floats")


if __name__ == "__main__":
    main()
