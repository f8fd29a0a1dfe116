#!/bin/sh
# The timm float64 parity fixtures of the ViT options (issue 33): tests/fixtures/options/.
# One small rectangular model per option (12x16 RGB, patch 4, width 24, 2 heads, 2 blocks),
# made by scripts/make_parity_fixture.py and checked by tests/families.rs with `verify`.
set -e
out=tests/fixtures/options
mkdir -p "$out"
make() {
    name=$1; shift
    python3 scripts/make_parity_fixture.py --out "$out/$name.safetensors" \
        --img 12 16 --patch 4 --chans 3 --dim 24 --depth 2 --heads 2 --mlp-hidden 48 \
        --classes 5 --batch 3 --seed 33 "$@"
}
make no_embed_class --no-embed-class
make gap_fc_norm --no-class-token --global-pool avg
make avg_norm_per_token --no-class-token --global-pool avg --fc-norm false
make layer_scale --init-values 1e-5
make deit3 --no-embed-class --init-values 1e-6
make reg_tokens --reg-tokens 4 --no-embed-class --init-values 1e-5
make reg_tokens_with_pos --reg-tokens 2
make distilled --distilled
make clip_quickgelu --pre-norm --act quick_gelu --ln-eps 1e-5
make qk_norm --qk-norm
make gap_medium --no-class-token --global-pool avg --fc-norm false --no-qkv-bias --init-values 1e-6

# Any patch and image size: DINOv2's patch 14 with LayerScale, positions made for 518 = 37x37
# patches and resampled as timm does, at 98, 112, 224 and 518, and rectangular; as
# vit_*_patch14_dinov2 (the class token has a position) or _reg4_dinov2 (4 registers,
# positions on the patches only).
make_p14() {
    name=$1; shift
    python3 scripts/make_parity_fixture.py --out "$out/$name.safetensors" \
        --patch 14 --chans 3 --dim 24 --depth 2 --heads 2 --mlp-hidden 48 --classes 5 \
        --seed 14 --init-values 1e-5 "$@"
}
make_p14 patch14_98 --img 98 98 --batch 2 --pos-grid 37 37
make_p14 patch14_112_reg4 --img 112 112 --batch 2 --pos-grid 37 37 --reg-tokens 4 --no-embed-class
make_p14 patch14_224 --img 224 224 --batch 1 --pos-grid 37 37
make_p14 patch14_518_reg4 --img 518 518 --batch 1 --reg-tokens 4 --no-embed-class
make_p14 patch14_rect --img 98 154 --batch 2 --pos-grid 37 37 --reg-tokens 4 --no-embed-class
