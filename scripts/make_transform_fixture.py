#!/usr/bin/env python3
"""Reference numbers for the image transforms (src/data/transforms.rs), computed by PIL,
torchvision and timm: tests/fixtures/transforms.safetensors.

    pip install --target /tmp/pil11 pillow==11.3.0
    PYTHONPATH=/tmp/pil11 python3 scripts/make_transform_fixture.py [out.safetensors]

Made with Pillow 11.3 (any Pillow from 7 to 12): it resizes horizontally first, then
vertically, rounding to 8 bits between the passes. Pillow 13 picks the order of the passes
by cost, which moves some pixels of some shapes by one level; the fixture pins the classic
order (the one our resampler implements), and the script refuses another Pillow.

Contents (images are HWC uint8 as PIL holds them; `name` is `rgb` or `gray`):
  {name}.pixels                       the input image
  {name}.resize.{interp}.{W}x{H}      PIL img.resize((W, H), interp)
  {name}.boxes                        int64 [n, 4] crop boxes (left, top, width, height)
  {name}.crop{i}.{interp}             torchvision F.resized_crop(img, box i, 16x16, interp)
  {name}.eval.{interp}                float32 CHW: timm's eval transform at 16x16
                                      (Resize(floor(16/0.875)), CenterCrop(16), ToTensor,
                                      Normalize); rgb with ImageNet mean/std, gray with 0.5
  rgb.train                           float32 CHW: hflip(resized_crop(box 0, bicubic)),
                                      ToTensor, Normalize(ImageNet)
  sampler.{W}x{H}                     float64 [6] statistics of 20,000 boxes drawn by timm's
                                      RandomResizedCropAndInterpolation.get_params (scale
                                      0.08-1, ratio 3/4-4/3): mean and sd of the area fraction,
                                      mean and sd of log(w/h), mean box centre x/W and y/H
"""
import math
import random
import sys

import numpy as np
import torch
from PIL import Image
from safetensors.numpy import save_file
from timm.data import create_transform
from timm.data.transforms import RandomResizedCropAndInterpolation
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MODES = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC}
PIL_MODES = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}


def smooth_noise(rng, h, w, c):
    """Gradients plus noise: resampling errors show up on both edges and flat parts."""
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([(x * 255 / w), (y * 255 / h), ((x + y) * 127 / (w + h))], -1)[..., :c]
    noise = rng.integers(-60, 60, size=(h, w, c))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def hwc(img):
    a = np.asarray(img, dtype=np.uint8)
    return a[..., None] if a.ndim == 2 else a


def main(out):
    major = int(Image.__version__.split(".")[0])
    if not 7 <= major <= 12:
        sys.exit(f"Pillow {Image.__version__}: use Pillow 11.3 (see the docstring)")
    rng = np.random.default_rng(11)
    images = {
        # 37x23: eval crop offsets 6 and 1; 19x31: a .5 offset (Python rounds half to even)
        "rgb": Image.fromarray(smooth_noise(rng, 23, 37, 3), "RGB"),
        "gray": Image.fromarray(smooth_noise(rng, 31, 19, 1)[..., 0], "L"),
    }
    boxes = {
        "rgb": [(3, 2, 20, 15), (0, 0, 37, 23), (10, 5, 5, 9), (30, 1, 7, 22)],
        "gray": [(1, 4, 17, 20), (0, 0, 19, 31), (6, 11, 3, 4)],
    }
    t = {}
    for name, img in images.items():
        t[f"{name}.pixels"] = hwc(img)
        t[f"{name}.boxes"] = np.array(boxes[name], dtype=np.int64)
        for interp in MODES:
            for w, h in [(16, 16), (50, 41), (7, 30)]:
                t[f"{name}.resize.{interp}.{w}x{h}"] = hwc(img.resize((w, h), PIL_MODES[interp]))
            for i, (x, y, bw, bh) in enumerate(boxes[name]):
                crop = F.resized_crop(img, y, x, bh, bw, [16, 16], MODES[interp])
                t[f"{name}.crop{i}.{interp}"] = hwc(crop)
            if name == "rgb":
                tf = create_transform(16, is_training=False, interpolation=interp,
                                      crop_pct=0.875, mean=IMAGENET_MEAN, std=IMAGENET_STD)
            else:
                tf = T.Compose([T.Resize(math.floor(16 / 0.875), MODES[interp]), T.CenterCrop(16),
                                T.ToTensor(), T.Normalize((0.5,), (0.5,))])
            t[f"{name}.eval.{interp}"] = tf(img).numpy().astype(np.float32)
    x, y, bw, bh = boxes["rgb"][0]
    train = F.hflip(F.resized_crop(images["rgb"], y, x, bh, bw, [16, 16], MODES["bicubic"]))
    t["rgb.train"] = F.normalize(F.to_tensor(train), IMAGENET_MEAN, IMAGENET_STD).numpy()

    random.seed(5)
    for w, h in [(37, 23), (100, 100), (20, 60)]:
        img = Image.new("L", (w, h))
        area, logr, cx, cy = [], [], [], []
        for _ in range(20000):
            i, j, ch, cw = RandomResizedCropAndInterpolation.get_params(
                img, (0.08, 1.0), (3 / 4, 4 / 3))
            area.append(cw * ch / (w * h))
            logr.append(math.log(cw / ch))
            cx.append((j + cw / 2) / w)
            cy.append((i + ch / 2) / h)
        t[f"sampler.{w}x{h}"] = np.array(
            [np.mean(area), np.std(area), np.mean(logr), np.std(logr), np.mean(cx), np.mean(cy)],
            dtype=np.float64)
    t = {k: np.ascontiguousarray(v) for k, v in t.items()}
    save_file(t, out, metadata={"torch": torch.__version__, "pillow": Image.__version__})
    print(f"wrote {out}: {len(t)} tensors")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/transforms.safetensors")
