#!/usr/bin/env python3
"""timm ViTs to ONNX for onnxruntime-web (scripts/bench_web.mjs), with the same weights as a
timm state_dict in safetensors for vit-wgpu, so both systems run the same model.

    python3 scripts/export_onnx.py --out DIR [--models micro,tiny,vit_small_patch16_224]
        [--checkpoint micro=FILE] [--checkpoint tiny=FILE] [--seed 0]

micro and tiny are our presets as timm VisionTransformers (from our checkpoint when given,
else timm's init at --seed); vit_small_patch16_224 is timm's, randomly initialised (no
download). Writes DIR/<name>.onnx (batch axis dynamic, opset 17), DIR/<name>.safetensors and
DIR/models.json ({name: {onnx, safetensors, heads, image: [C, H, W], patch, dim, depth, mlp,
classes, params}}).
Needs: pip install torch timm onnx onnxscript safetensors.
"""
import argparse
import json
import os
import sys

import timm
import torch
from safetensors.torch import load_file, save_file

# Our presets (design.md section 1) as timm's VisionTransformer arguments.
PRESETS = {
    "micro": dict(img_size=28, patch_size=4, in_chans=1, embed_dim=64, depth=2, num_heads=4,
                  mlp_ratio=4.0, num_classes=10),
    "tiny": dict(img_size=32, patch_size=4, in_chans=3, embed_dim=192, depth=6, num_heads=3,
                 mlp_ratio=4.0, num_classes=10),
}


def build(name, checkpoint):
    if name in PRESETS:
        model = timm.models.vision_transformer.VisionTransformer(**PRESETS[name])
        if checkpoint:
            state = load_file(checkpoint)
            missing, unexpected = model.load_state_dict(state, strict=False)
            if missing or unexpected:
                sys.exit(f"{checkpoint}: not a {name} checkpoint (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]})")
    else:
        if checkpoint:
            sys.exit(f"--checkpoint is for micro and tiny; {name} is timm's random init")
        model = timm.create_model(name, pretrained=False)
    return model.eval()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--models", default="micro,tiny,vit_small_patch16_224")
    ap.add_argument("--checkpoint", action="append", default=[], metavar="NAME=FILE")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    checkpoints = {}
    for c in a.checkpoint:
        name, sep, path = c.partition("=")
        if not sep or not os.path.exists(path):
            sys.exit(f"--checkpoint {c}: expected NAME=FILE with an existing file")
        checkpoints[name] = path
    os.makedirs(a.out, exist_ok=True)
    index = {}
    for name in a.models.split(","):
        torch.manual_seed(a.seed)
        model = build(name, checkpoints.get(name))
        c, (h, w) = model.patch_embed.proj.in_channels, model.patch_embed.img_size
        x = torch.randn(2, c, h, w)
        onnx_path = os.path.join(a.out, f"{name}.onnx")
        # The TorchScript exporter: one self-contained file (no external data) that
        # onnxruntime-web loads from a single fetch.
        torch.onnx.export(model, (x,), onnx_path, input_names=["images"], output_names=["logits"],
                          dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
                          opset_version=17, dynamo=False)
        st_path = os.path.join(a.out, f"{name}.safetensors")
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, st_path)
        with torch.no_grad():
            logits = model(x)
        index[name] = dict(onnx=os.path.basename(onnx_path), safetensors=os.path.basename(st_path),
                           heads=model.blocks[0].attn.num_heads, image=[c, h, w],
                           patch=model.patch_embed.patch_size[0], dim=model.embed_dim,
                           depth=len(model.blocks), mlp=model.blocks[0].mlp.fc1.out_features,
                           classes=model.num_classes,
                           params=sum(p.numel() for p in model.parameters()))
        print(f"{name}: {onnx_path} ({os.path.getsize(onnx_path) / 1e6:.1f} MB), {st_path}; "
              f"logits {tuple(logits.shape)}")
    with open(os.path.join(a.out, "models.json"), "w") as f:
        json.dump(index, f, indent=1)


if __name__ == "__main__":
    main()
