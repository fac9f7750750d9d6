#!/bin/sh
# Fit time and peak RSS of `patchcore fit` (WRN-50-2 with seeded random weights, 224² crop,
# coreset 10 %) on N synthetic images, in memory and under --max-memory, as in BENCHMARKS.md.
#
#   scripts/fit_memory_table.sh [BUDGET] N...        e.g. scripts/fit_memory_table.sh 1GiB 100 400
#
# Needs a release build (cargo build --release --bin patchcore --example fit_memory_data) and
# /usr/bin/time. Data goes to ${FIT_MEMORY_DIR:-/tmp/patchcore-fit-memory}.
set -eu
budget=${1:-1GiB}
shift
target=${CARGO_TARGET_DIR:-target}
bin=$target/release/patchcore
gen=$target/release/examples/fit_memory_data
dir=${FIT_MEMORY_DIR:-/tmp/patchcore-fit-memory}
mkdir -p "$dir"
printf '| images | plan | wall s | peak RSS MiB (time -v) | VmHWM MB (fit) | estimated peak MiB |\n'
printf '|---:|---|---:|---:|---:|---:|\n'
for n in "$@"; do
    train=$("$gen" "$dir" "$n")
    for mode in memory budget; do
        out=$dir/m$n-$mode.safetensors
        rm -f "$out"
        extra=""
        [ "$mode" = budget ] && extra="--max-memory $budget"
        # shellcheck disable=SC2086
        /usr/bin/time -v "$bin" fit --weights "$dir/wrn50_2_random.safetensors" \
            --arch wide_resnet50_2 --train "$train" --out "$out" --coreset 0.1 $extra \
            > "$dir/log$n-$mode.txt" 2>&1 || { echo "| $n | $mode | failed: $(grep -m1 error "$dir/log$n-$mode.txt") |"; continue; }
        log=$dir/log$n-$mode.txt
        wall=$(grep 'Elapsed (wall clock)' "$log" | awk '{print $NF}' |
            awk -F: '{ if (NF == 3) print $1*3600+$2*60+$3; else print $1*60+$2 }')
        rss=$(grep 'Maximum resident set size' "$log" | awk '{printf "%.0f", $NF/1024}')
        plan=$(grep -m1 'memory plan' "$log" | sed 's/memory plan \([A-Za-z]*\).*/\1/')
        hwm=$(grep -m1 'peak memory' "$log" | sed 's/peak memory: \([0-9]*\) MB.*/\1/')
        est=$(grep -m1 'estimated peak' "$log" | sed 's/.*estimated peak: //')
        printf '| %s | %s (%s) | %s | %s | %s | %s |\n' "$n" "$mode" "$plan" "$wall" "$rss" "$hwm" "$est"
    done
done
