#!/usr/bin/env bash
# Regenerates the seed corpora of the fuzz targets (fuzz/corpus/<target>/, git-ignored).
# Usage: scripts/make_fuzz_corpus.sh [OUT_DIR]   (default: fuzz/corpus)
# Then e.g.: cd fuzz && cargo +nightly fuzz run model_load -- -max_total_time=600 -rss_limit_mb=2048 -timeout=10 -jobs=1
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-$root/fuzz/corpus}"
mkdir -p "$out"/{model_load,weights_load,image_decode,tensor_read,params_check}
# Models, weights and tensors written by the crate itself.
(cd "$root" && cargo run --quiet --release --example make_fuzz_corpus -- "$out")
# Images: the preprocessing fixtures (PNG 8/16-bit, grey, grey+alpha, RGBA, JPEG, masks).
cp "$root"/tests/fixtures/preprocess/*.png "$root"/tests/fixtures/preprocess/*.jpg "$out/image_decode/"
# More safetensors inputs: the small fixture files of other tests.
for f in "$root"/tests/fixtures/embedding/*.safetensors "$root"/tests/fixtures/anomaly_map.safetensors; do
    if [ "$(stat -c %s "$f")" -lt 40000 ]; then cp "$f" "$out/tensor_read/"; fi
done
# params_check takes structured input (arbitrary): a few fixed byte strings are enough to start.
printf '\x01\x00\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00' > "$out/params_check/zeros"
head -c 512 /dev/zero | tr '\0' '\377' > "$out/params_check/ones"
if [ -d "$root/tests/fixtures/fuzz" ]; then
    # Past crashes (regression inputs) are good seeds for their targets.
    for d in "$root"/tests/fixtures/fuzz/*/; do
        t="$(basename "$d")"
        [ -d "$out/$t" ] && cp "$d"* "$out/$t/" 2>/dev/null || true
    done
fi
echo "corpora written to $out"
