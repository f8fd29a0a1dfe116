#!/usr/bin/env python3
"""Fixtures for the model families (issue 33): tests/fixtures/families/.

    pip install torch timm transformers safetensors pillow==11.3.0
    python3 scripts/make_family_fixtures.py [tests/fixtures/families]

Made with torch 2.15, timm 1.0.31, transformers 5.25, Pillow 11.3. Nothing is downloaded:
every model is built with random weights (pretrained=False / from a config) and saved the
way the hubs lay folders out (timm's `save_for_hf`, transformers' `save_pretrained`).

Contents:
  registry.json            for every architecture name src/model/arch.rs knows: what timm
                           builds for it (width, depth, heads, MLP width, patch, image size,
                           tokens, pooling, norms, LayerScale, activation, eps, classes) and
                           its default pretrained tag's eval preprocessing
  images/wide.png, tall.png  two RGB photos-like images (gradients + noise) of odd sizes
  timm_vit/                a timm hub folder (config.json + model.safetensors) of a small
                           vit_small_patch16_224 (model_args: 32x32, patch 8, width 32, ...)
  timm_vit.expected.safetensors   float32 `input` [2,3,32,32] (timm's eval transform of the
                           two images, from the folder's pretrained_cfg) and `probs` [2,K]
                           (softmax of the model loaded back with local-dir:, in float64)
  timm_<family>/ and .expected.safetensors   the same for one name of each other family
                           (FAMILY_FOLDERS: deit3, dinov2, reg4, distilled, clip_quickgelu,
                           gap) at width 24, depth 2, 2 heads
  hf_vit/                  a transformers ViTForImageClassification folder (config.json,
                           model.safetensors, preprocessor_config.json)
  hf_vit.expected.safetensors     the same with transformers' PIL image processor
                           (`probs_torchvision`: with transformers 5's default torchvision one)
  hf_deit/, hf_deit_teacher/, hf_dinov2/ and .expected.safetensors   transformers'
                           DeiTForImageClassification (square resize + center crop),
                           DeiTForImageClassificationWithTeacher and
                           Dinov2ForImageClassification (shortest-edge resize + crop to a
                           smaller grid than stored: positions interpolated)
  hf_dinov2.grads.safetensors     a debug-state file (`verify`'s format, timm's names): a
                           batch, logits, loss and every parameter's gradient of the Dinov2
                           model in float64 (its head reads [class token ; patch mean])
(`--hf-only` remakes just the transformers DeiT and Dinov2 files.)
Every weight is redrawn with a non-trivial spread (norm scales around 1, biases and tokens
around 0.3), so each tensor moves the probabilities.
"""
import json
import os
import sys

import numpy as np
import timm
import torch
import transformers
from PIL import Image
from safetensors.torch import save_file
from timm.models._hub import save_for_hf

# Our registry's names (src/model/arch.rs).
NAMES = """
vit_tiny_patch16_224 vit_small_patch16_224 vit_base_patch16_224 vit_large_patch16_224
deit_tiny_patch16_224 deit_small_patch16_224 deit_base_patch16_224
deit_tiny_distilled_patch16_224 deit_small_distilled_patch16_224 deit_base_distilled_patch16_224
deit3_small_patch16_224 deit3_medium_patch16_224 deit3_base_patch16_224 deit3_large_patch16_224
vit_small_patch14_dinov2 vit_base_patch14_dinov2 vit_large_patch14_dinov2
vit_small_patch14_reg4_dinov2 vit_base_patch14_reg4_dinov2 vit_large_patch14_reg4_dinov2
vit_base_patch16_clip_quickgelu_224 vit_base_patch32_clip_quickgelu_224
vit_large_patch14_clip_quickgelu_224
vit_medium_patch16_gap_256 vit_base_patch16_gap_224
""".split()


def registry_entry(name):
    with torch.device("meta"):
        m = timm.create_model(name, pretrained=False)
    b = m.blocks[0]
    pc = m.pretrained_cfg
    ls = type(b.ls1).__name__ == "LayerScale"
    init_values = None
    if ls:
        # meta tensors hold no values: read the constructor argument back from the model args
        init_values = timm.create_model(name, pretrained=False, depth=1, embed_dim=16,
                                        num_heads=1).blocks[0].ls1.gamma[0].item()
    return {
        "img_size": list(m.patch_embed.img_size),
        "patch_size": m.patch_embed.patch_size[0],
        "in_chans": m.patch_embed.proj.in_channels,
        "num_classes": m.num_classes,
        "global_pool": m.global_pool,
        "embed_dim": m.embed_dim,
        "depth": len(m.blocks),
        "num_heads": b.attn.num_heads,
        "mlp_hidden": b.mlp.fc1.out_features,
        "qkv_bias": b.attn.qkv.bias is not None,
        "qk_norm": type(b.attn.q_norm).__name__ != "Identity",
        "init_values": init_values,
        "class_token": m.cls_token is not None,
        "no_embed_class": m.no_embed_class,
        "reg_tokens": m.num_reg_tokens,
        "pre_norm": type(m.norm_pre).__name__ != "Identity",
        "fc_norm": type(m.fc_norm).__name__ != "Identity",
        "act_layer": {"GELU": "gelu", "QuickGELU": "quick_gelu"}[type(b.mlp.act).__name__],
        "norm_eps": b.norm1.eps,
        "distilled": getattr(m, "dist_token", None) is not None,
        "input_size": list(pc["input_size"]),
        "interpolation": pc["interpolation"],
        "crop_pct": pc["crop_pct"],
        "mean": list(pc["mean"]),
        "std": list(pc["std"]),
    }


def smooth_noise(rng, h, w):
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 / w, y * 255 / h, (x + y) * 127 / (w + h) + 60], -1)
    noise = rng.integers(-50, 50, size=(h, w, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def scramble(model, seed):
    """Non-trivial values everywhere: norm scales around 1, everything else random."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g, dtype=torch.float64)
            if p.dim() == 1 and ("norm" in name or name.endswith("gamma")):
                p.copy_(1.0 + 0.2 * r)
            elif p.dim() == 1 or "token" in name or "pos" in name or "position" in name:
                p.copy_(0.3 * r)
            else:
                fan_in = p[0].numel()
                p.copy_(r / fan_in**0.5)


LABELS = ["tench", "goldfish", "great white shark", "tiger shark", "hammerhead"]


def softmax64(logits):
    return torch.softmax(logits.double(), -1).float()


# One small timm hub folder per family of the registry (tests/fixtures/families/timm_<family>/),
# each with its expected probabilities like timm_vit's: the family's options at a tiny size.
FAMILY_FOLDERS = {
    "deit3": ("deit3_small_patch16_224", dict(img_size=32, patch_size=8)),
    "dinov2": ("vit_small_patch14_dinov2", dict(img_size=28, patch_size=14)),
    "reg4": ("vit_small_patch14_reg4_dinov2", dict(img_size=28, patch_size=14)),
    "distilled": ("deit_tiny_distilled_patch16_224", dict(img_size=32, patch_size=8)),
    "clip_quickgelu": ("vit_base_patch16_clip_quickgelu_224", dict(img_size=32, patch_size=8)),
    "gap": ("vit_medium_patch16_gap_256", dict(img_size=32, patch_size=8)),
}


def family_folders(out, images, labels):
    for i, (family, (name, size)) in enumerate(FAMILY_FOLDERS.items()):
        torch.manual_seed(0)
        m = timm.create_model(name, pretrained=False, embed_dim=24, depth=2, num_heads=2,
                              num_classes=5, **size)
        scramble(m, 10 + i)
        d = os.path.join(out, f"timm_{family}")
        save_for_hf(m, d, model_config={"label_names": labels}, safe_serialization=True)
        m = timm.create_model(f"local-dir:{d}", pretrained=True).eval()
        t = timm.data.create_transform(**timm.data.resolve_model_data_config(m))
        x = torch.stack([t(im) for im in images])
        with torch.no_grad():
            probs = softmax64(m.double()(x.double()))
        save_file({"input": x.contiguous(), "probs": probs}, f"{d}.expected.safetensors")


def dinov2_to_timm(state, depth):
    """Dinov2's in-memory tensor names (transformers 5: q_proj, k_proj, v_proj, o_proj; its
    files keep the older query/key/value/output.dense names) to timm's."""
    out = {}
    e = "dinov2.embeddings."
    out["cls_token"] = state[f"{e}cls_token"]
    out["pos_embed"] = state[f"{e}position_embeddings"]
    for p in ["weight", "bias"]:
        out[f"patch_embed.proj.{p}"] = state[f"{e}patch_embeddings.projection.{p}"]
        out[f"norm.{p}"] = state[f"dinov2.layernorm.{p}"]
        out[f"head.{p}"] = state[f"classifier.{p}"]
    renames = [("norm1", "norm1"), ("attention.o_proj", "attn.proj"), ("norm2", "norm2"),
               ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2")]
    for i in range(depth):
        l, b = f"dinov2.encoder.layer.{i}.", f"blocks.{i}."
        for p in ["weight", "bias"]:
            for theirs, ours in renames:
                out[f"{b}{ours}.{p}"] = state[f"{l}{theirs}.{p}"]
            out[f"{b}attn.qkv.{p}"] = torch.cat(
                [state[f"{l}attention.{q}_proj.{p}"] for q in ["q", "k", "v"]])
        out[f"{b}ls1.gamma"] = state[f"{l}layer_scale1.lambda1"]
        out[f"{b}ls2.gamma"] = state[f"{l}layer_scale2.lambda1"]
    return out


def hf_expected(d, images, model_cls, pil_cls):
    """The folder's probabilities with transformers' PIL image processor, in float64."""
    hf = model_cls.from_pretrained(d).eval().double()
    x = pil_cls.from_pretrained(d)(images=images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        probs = softmax64(hf(pixel_values=x.double()).logits)
    save_file({"input": x.float().contiguous(), "probs": probs}, f"{d}.expected.safetensors")


def hf_family_folders(out, images, labels):
    """transformers' DeiT (with and without teacher) and Dinov2 folders (issue 33 item 3)."""
    imagenet = dict(image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    small = dict(hidden_size=24, num_hidden_layers=2, num_attention_heads=2,
                 id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)})
    # DeiT: a square resize then a center crop, as DeiTImageProcessor does.
    for i, (name, cls) in enumerate([("hf_deit", transformers.DeiTForImageClassification),
                                     ("hf_deit_teacher",
                                      transformers.DeiTForImageClassificationWithTeacher)]):
        cfg = transformers.DeiTConfig(image_size=32, patch_size=8, intermediate_size=48, **small)
        torch.manual_seed(0)
        m = cls(cfg)
        scramble(m, 20 + i)
        d = os.path.join(out, name)
        m.save_pretrained(d, safe_serialization=True)
        crop = name == "hf_deit"
        transformers.DeiTImageProcessor(
            size={"height": 36 if crop else 32, "width": 36 if crop else 32},
            crop_size={"height": 32, "width": 32}, do_center_crop=crop, resample=3,
            **imagenet).save_pretrained(d)
        hf_expected(d, images, cls, transformers.DeiTImageProcessorPil)
    # Dinov2: stored for 42x42 (a 3x3 grid), run at the processor's 28x28 crop (2x2), so
    # its positions are interpolated; LayerScale; MLP width from mlp_ratio.
    cfg = transformers.Dinov2Config(image_size=42, patch_size=14, mlp_ratio=2,
                                    layerscale_value=0.5, **small)
    torch.manual_seed(0)
    m = transformers.Dinov2ForImageClassification(cfg)
    scramble(m, 22)
    d = os.path.join(out, "hf_dinov2")
    m.save_pretrained(d, safe_serialization=True)
    transformers.BitImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 28, "width": 28},
                                   resample=3, **imagenet).save_pretrained(d)
    hf_expected(d, images, transformers.Dinov2ForImageClassification,
                transformers.BitImageProcessorPil)
    # The loss gradient of every parameter at the stored size (float64), under timm's
    # names, as `verify` reads debug-state files: the cls+mean head is new math.
    m = m.double().train()
    g = torch.Generator().manual_seed(5)
    x = torch.randn(3, 3, 42, 42, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 3, 4])
    logits = m(pixel_values=x).logits
    loss = torch.nn.functional.cross_entropy(logits, y)
    loss.backward()
    state = {k: v.detach() for k, v in m.state_dict().items()}
    grads = {k: (v.grad if v.grad is not None else torch.zeros_like(v))
             for k, v in m.named_parameters()}
    fixture = {k: v.float().contiguous() for k, v in dinov2_to_timm(state, 2).items()}
    for k, v in dinov2_to_timm(grads, 2).items():
        fixture[f"expected.grad.{k}"] = v.float().contiguous()
    fixture["input.images"] = x.float().contiguous()
    fixture["input.labels"] = y
    fixture["expected.logits"] = logits.detach().float().contiguous()
    fixture["expected.loss"] = loss.detach().float().reshape(1)
    meta = dict(img_h=42, img_w=42, patch=14, chans=3, classes=len(labels), dim=24, depth=2,
                heads=2, mlp_hidden=48, act="gelu", ln_eps=cfg.layer_norm_eps, init_values=0.5,
                global_pool="cls_avg", batch=3, generator="scripts/make_family_fixtures.py",
                torch=torch.__version__, transformers=transformers.__version__)
    save_file(fixture, os.path.join(out, "hf_dinov2.grads.safetensors"),
              metadata={k: str(v) for k, v in meta.items()})
    print(f"hf_dinov2: loss {loss.item():.6f}")


def main(out):
    os.makedirs(os.path.join(out, "images"), exist_ok=True)
    if "--hf-only" in sys.argv:
        images = [Image.open(os.path.join(out, "images", f)).convert("RGB")
                  for f in ["wide.png", "tall.png"]]
        return hf_family_folders(out, images, LABELS)
    registry = {n: registry_entry(n) for n in NAMES}
    with open(os.path.join(out, "registry.json"), "w") as f:
        json.dump(registry, f, indent=1, sort_keys=True)

    rng = np.random.default_rng(33)
    paths = []
    for stem, (h, w) in [("wide", (41, 57)), ("tall", (53, 38))]:
        p = os.path.join(out, "images", f"{stem}.png")
        Image.fromarray(smooth_noise(rng, h, w), "RGB").save(p)
        paths.append(p)
    images = [Image.open(p).convert("RGB") for p in paths]
    labels = LABELS

    # timm hub folder
    torch.manual_seed(0)
    m = timm.create_model("vit_small_patch16_224", pretrained=False, img_size=32, patch_size=8,
                          embed_dim=32, depth=2, num_heads=2, num_classes=5)
    scramble(m, 1)
    d = os.path.join(out, "timm_vit")
    save_for_hf(m, d, model_config={"label_names": labels}, safe_serialization=True)
    m = timm.create_model(f"local-dir:{d}", pretrained=True).eval()
    t = timm.data.create_transform(**timm.data.resolve_model_data_config(m))
    x = torch.stack([t(im) for im in images])
    with torch.no_grad():
        probs = softmax64(m.double()(x.double()))
    save_file({"input": x.contiguous(), "probs": probs}, f"{d}.expected.safetensors")
    family_folders(out, images, labels)

    # transformers folder
    cfg = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=32,
                                 num_hidden_layers=2, num_attention_heads=2,
                                 intermediate_size=48, id2label=dict(enumerate(labels[:4])),
                                 label2id={n: i for i, n in enumerate(labels[:4])})
    torch.manual_seed(0)
    hf = transformers.ViTForImageClassification(cfg)
    scramble(hf, 2)
    d = os.path.join(out, "hf_vit")
    hf.save_pretrained(d, safe_serialization=True)
    proc = transformers.ViTImageProcessor(size={"height": 32, "width": 32},
                                          resample=3, image_mean=[0.485, 0.456, 0.406],
                                          image_std=[0.229, 0.224, 0.225])
    proc.save_pretrained(d)
    hf = transformers.ViTForImageClassification.from_pretrained(d).eval().double()
    # The reference is transformers' PIL backend (transformers 4's ViTImageProcessor, the
    # resampling timm uses too). transformers 5's default, a torchvision backend, resizes
    # uint8 tensors with torch's own antialiased kernels and lands up to one grey level away
    # from PIL on some pixels; its probabilities are kept beside for comparison.
    pil = transformers.ViTImageProcessorPil.from_pretrained(d)
    x = pil(images=images, return_tensors="pt")["pixel_values"]
    tv = transformers.AutoImageProcessor.from_pretrained(d)
    x_tv = tv(images=images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        probs = softmax64(hf(pixel_values=x.double()).logits)
        probs_tv = softmax64(hf(pixel_values=x_tv.double()).logits)
    print(f"hf: {type(tv).__name__} (default) vs the PIL backend: input max |diff| "
          f"{(x - x_tv).abs().max().item():.2e}, probabilities {(probs - probs_tv).abs().max().item():.2e}")
    save_file({"input": x.contiguous(), "probs": probs, "probs_torchvision": probs_tv},
              f"{d}.expected.safetensors")
    hf_family_folders(out, images, labels)
    print(f"wrote {out}")


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    main(args[0] if args else "tests/fixtures/families")
