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
