#!/usr/bin/env bash
# Builds the browser package into web/pkg/ (vit_wgpu.js + vit_wgpu_bg.wasm): the library for
# wasm32-unknown-unknown with the `web` feature, then wasm-bindgen --target web (plain ES
# modules, no bundler). Installs only the wasm32 target and wasm-bindgen-cli, at the
# version Cargo.lock pins for the wasm-bindgen crate (the two must match).
#   scripts/build_web.sh [--debug]
set -euo pipefail
cd "$(dirname "$0")/.."

profile=release
[ "${1:-}" = "--debug" ] && profile=debug

rustup target list --installed | grep -qx wasm32-unknown-unknown \
  || rustup target add wasm32-unknown-unknown

version=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/[^0-9.]/, ""); print; exit }' Cargo.lock)
if [ -z "$version" ]; then
  echo "build_web.sh: no wasm-bindgen in Cargo.lock" >&2
  exit 1
fi
installed=$(wasm-bindgen --version 2>/dev/null | awk '{ print $2 }' || true)
if [ "$installed" != "$version" ]; then
  echo "installing wasm-bindgen-cli $version (found: ${installed:-none})" >&2
  # Not --locked: its lock file pins a webpki-roots release the registry does not offer.
  cargo install wasm-bindgen-cli --version "$version"
fi

# WEB_FEATURES=web-checks adds the kernel checks (scripts/web_kernels.mjs).
flags=(--lib --no-default-features --features "${WEB_FEATURES:-web}" --target wasm32-unknown-unknown)
[ "$profile" = release ] && flags+=(--release)
# A cdylib for this build only, so native builds of the library do not link one.
cargo rustc "${flags[@]}" --crate-type cdylib

wasm-bindgen --target web --out-dir web/pkg --no-typescript \
  "target/wasm32-unknown-unknown/$profile/vit_wgpu.wasm"
ls -l web/pkg/vit_wgpu_bg.wasm
