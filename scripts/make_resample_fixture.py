#!/usr/bin/env python3
"""Write tests/fixtures/pos_embed_resample.safetensors: random position embeddings and what
timm's resample_abs_pos_embed (its defaults: bicubic, antialias=True) makes of them.

    pip install torch timm safetensors
    python3 scripts/make_resample_fixture.py tests/fixtures/pos_embed_resample.safetensors
"""
import sys

import torch
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed

CASES = [((7, 7), (14, 14)), ((14, 14), (7, 7)), ((3, 5), (6, 10)), ((7, 7), (5, 9)), ((8, 8), (8, 8)), ((4, 4), (3, 3))]


def main():
    torch.manual_seed(0)
    out, meta = {}, {}
    dim = 6
    for i, (old, new) in enumerate(CASES):
        pos = torch.randn(1, 1 + old[0] * old[1], dim)
        res = resample_abs_pos_embed(pos, new_size=list(new), old_size=list(old), num_prefix_tokens=1)
        out[f"case{i}.input"] = pos.contiguous()
        out[f"case{i}.output"] = res.clone().contiguous()
        meta[f"case{i}"] = f"{old[0]},{old[1]},{new[0]},{new[1]}"
    meta["cases"] = str(len(CASES))
    meta["dim"] = str(dim)
    save_file(out, sys.argv[1], metadata=meta)


if __name__ == "__main__":
    main()
