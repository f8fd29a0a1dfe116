#!/usr/bin/env python3
"""The reference for `vit-wgpu bench --data folder`: torchvision's ImageFolder + DataLoader
with timm's training transforms on the same folder, with the same batch size and workers.

    python3 scripts/bench_torchvision_loader.py DATA_DIR --image-size 224 --batch-size 64 --workers 2

DATA_DIR (or its train/ subfolder) holds one subfolder of images per class. Transforms as the
Rust loader applies them: timm's RandomResizedCropAndInterpolation (scale 0.08-1, ratio
3/4-4/3, bilinear), RandomHorizontalFlip, ToTensor, Normalize(0.5, 0.5). One epoch (shuffled,
drop_last) or --batches N batches; prints decoded and augmented images per second.
"""
import argparse
import json
import os
import time

import torch
from timm.data.transforms import RandomResizedCropAndInterpolation
from torchvision import datasets, transforms


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data_dir")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=os.cpu_count())
    p.add_argument("--batches", type=int, default=None)
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    root = os.path.join(a.data_dir, "train")
    root = root if os.path.isdir(root) else a.data_dir
    tf = transforms.Compose([
        RandomResizedCropAndInterpolation(a.image_size, interpolation="bilinear"),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    ])
    ds = datasets.ImageFolder(root, transform=tf)
    loader = torch.utils.data.DataLoader(
        ds, batch_size=a.batch_size, shuffle=True, num_workers=a.workers, drop_last=True,
        persistent_workers=False)
    t0 = time.perf_counter()
    images = 0
    for i, (x, _) in enumerate(loader):
        images += x.shape[0]
        if a.batches is not None and i + 1 >= a.batches:
            break
    seconds = time.perf_counter() - t0
    ips = images / seconds
    if a.json:
        print(json.dumps({"images": images, "seconds": seconds, "images_per_second": ips,
                          "workers": a.workers, "batch_size": a.batch_size,
                          "image_size": a.image_size, "torch": torch.__version__}))
    else:
        print(f"torchvision loader: {ips:.1f} images/s ({images} images, {a.image_size}x"
              f"{a.image_size}, {a.workers} workers, batch {a.batch_size})")


if __name__ == "__main__":
    main()
