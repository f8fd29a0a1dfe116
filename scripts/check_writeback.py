#!/usr/bin/env python3
"""Check a folder vit-wgpu wrote back (`train --init FOLDER` writes RUN/hub/) in the library
whose format it has: timm (`create_model("local-dir:DIR", pretrained=True)`, a strict
state_dict load) or transformers (`AutoModelForImageClassification.from_pretrained(DIR)`,
which must report no missing, unexpected or mismatched tensor), with its class names; then
compare that library's predictions with `vit-wgpu infer` on the same image files, each side
with the folder's own eval preprocessing (transformers' PIL image processor backend).

    python3 scripts/check_writeback.py DIR [IMAGE ...] [--bin target/release/vit-wgpu]

vit-wgpu prints probabilities, so the logits are compared as log-probabilities (logits
minus their log-sum-exp: equal within the tolerance exactly when the logits are, up to one
constant per image, which softmax ignores). Exit status 1 when anything differs by 1e-4 or
more. A script for people (needs torch, timm, transformers); tests do not run it.
"""
import argparse
import glob
import json
import os
import subprocess
import sys

import torch

TOL = 1e-4


def reference(folder, images):
    """(library, class names, log-probabilities [n, K] in float64) of the folder."""
    from PIL import Image
    config = json.load(open(os.path.join(folder, "config.json")))
    pil = [Image.open(p).convert("RGB") for p in images]
    if "architecture" in config:
        import timm
        m = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
        t = timm.data.create_transform(**timm.data.resolve_model_data_config(m))
        x = torch.stack([t(im) for im in pil])
        names = config.get("label_names") or [str(i) for i in range(m.num_classes)]
        lib = f"timm {timm.__version__} ({config['architecture']}, strict load)"
    else:
        import transformers
        m, info = transformers.AutoModelForImageClassification.from_pretrained(
            folder, output_loading_info=True)
        bad = {k: v for k, v in info.items() if k != "error_msgs" and v}
        if bad or info.get("error_msgs"):
            sys.exit(f"{folder}: transformers did not load every tensor strictly: {info}")
        m = m.eval()
        pre = json.load(open(os.path.join(folder, "preprocessor_config.json")))
        proc = getattr(transformers, pre["image_processor_type"] + "Pil").from_pretrained(folder)
        x = proc(images=pil, return_tensors="pt")["pixel_values"]
        names = [m.config.id2label[i] for i in range(m.config.num_labels)]
        lib = (f"transformers {transformers.__version__} ({type(m).__name__}, no missing, "
               f"unexpected or mismatched tensors)")
    with torch.no_grad():
        logits = m.double()(x.double())
        logits = logits if torch.is_tensor(logits) else logits.logits
    return lib, names, torch.log_softmax(logits, -1)


def ours(binary, folder, images, k):
    out = subprocess.run([binary, "infer", "--checkpoint", folder, "--json", "--top-k", str(k),
                          *images], capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"vit-wgpu infer failed:\n{out.stderr}")
    rows = [json.loads(l) for l in out.stdout.splitlines() if l.startswith("{")]
    return [{e["class"]: e["probability"] for e in r["top"]} for r in rows if "top" in r]


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap = argparse.ArgumentParser()
    ap.add_argument("folder")
    ap.add_argument("images", nargs="*")
    ap.add_argument("--bin", default=os.path.join(root, "target/release/vit-wgpu"))
    a = ap.parse_args()
    images = a.images or sorted(glob.glob(os.path.join(root, "tests/fixtures/families/images/*.png")))
    lib, names, logp = reference(a.folder, images)
    print(f"{a.folder}: loads in {lib}; classes {names}")
    rows = ours(a.bin, a.folder, images, len(names))
    if len(rows) != len(images):
        sys.exit(f"vit-wgpu printed {len(rows)} predictions for {len(images)} images")
    worst_p = worst_l = 0.0
    for i, row in enumerate(rows):
        if sorted(row) != sorted(names):
            sys.exit(f"class names differ: vit-wgpu {sorted(row)} vs {sorted(names)}")
        p = torch.tensor([row[n] for n in names], dtype=torch.float64)
        worst_p = max(worst_p, (p - logp[i].exp()).abs().max().item())
        worst_l = max(worst_l, (p.log() - logp[i]).abs().max().item())
    ok = worst_p < TOL and worst_l < TOL
    print(f"  {len(images)} images: probabilities max |diff| {worst_p:.2e}, log-probabilities "
          f"max |diff| {worst_l:.2e} -> {'OK' if ok else 'FAIL'} (tolerance {TOL})")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
