#!/usr/bin/env bash
# Cross-build the crate for aarch64-unknown-linux-gnu and run tests under qemu-user; also run
# the kernel tests of the host build on an emulated x86-64 CPU without AVX/FMA so that the
# portable (non-SIMD) micro-kernels of `gemm` and `matrixmultiply` are exercised.
# Called by .ci/run; can be run on its own: `bash .ci/aarch64.sh`.
#
# It installs what it needs (the rustup target; on Debian/Ubuntu as root: the cross linker,
# the aarch64 C library and qemu-user) with time limits. If that is impossible it prints a
# "SKIPPED" block and FAILS, so a missing cross check never looks like a passing one. On a
# machine where that is known and accepted, set PATCHCORE_CI_ALLOW_SKIP_CROSS=1 to turn the
# failure into a loud, non-failing skip.
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET=aarch64-unknown-linux-gnu
SYSROOT=/usr/aarch64-linux-gnu
# Upper bounds (seconds) for the network steps; they must never hang CI.
SETUP_TIMEOUT=${PATCHCORE_CI_SETUP_TIMEOUT:-600}

step() { printf '\n=== %s ===\n' "$*"; }

skip() {
  printf '\n'
  printf '#%.0s' {1..78}; printf '\n'
  printf '# SKIPPED: aarch64 cross build, NEON and portable-kernel tests under qemu\n'
  printf '# reason: %s\n' "$*"
  printf '# Nothing of this step was checked. Install the tools by hand:\n'
  printf '#   rustup target add %s\n' "$TARGET"
  printf '#   apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user\n'
  printf '#%.0s' {1..78}; printf '\n'
  if [[ "${PATCHCORE_CI_ALLOW_SKIP_CROSS:-0}" == 1 ]]; then
    echo "PATCHCORE_CI_ALLOW_SKIP_CROSS=1: continuing without the cross checks."
    exit 0
  fi
  echo "ERROR: the cross checks are required (set PATCHCORE_CI_ALLOW_SKIP_CROSS=1 to skip)."
  exit 1
}

have_tools() {
  command -v aarch64-linux-gnu-gcc >/dev/null &&
    command -v qemu-aarch64 >/dev/null &&
    command -v qemu-x86_64 >/dev/null &&
    [[ -e "$SYSROOT/lib/ld-linux-aarch64.so.1" && -e "$SYSROOT/lib/libc.so" ]]
}

step "aarch64: setup"
if ! rustup target list --installed 2>/dev/null | grep -qx "$TARGET"; then
  timeout "$SETUP_TIMEOUT" rustup target add "$TARGET" ||
    skip "'rustup target add $TARGET' failed or timed out (no network?)"
fi
if have_tools; then
  echo "cross linker, aarch64 libc and qemu-user already installed"
else
  command -v apt-get >/dev/null || skip "cross tools missing and apt-get is not available"
  if [[ $(id -u) == 0 ]]; then
    SUDO=()
  elif sudo -n true 2>/dev/null; then
    SUDO=(sudo -n)
  else
    skip "cross tools missing and apt-get needs root (no passwordless sudo)"
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt_opts=(-o DPkg::Lock::Timeout=120 -o Acquire::Retries=2 -o Acquire::http::Timeout=30)
  timeout "$SETUP_TIMEOUT" "${SUDO[@]}" apt-get "${apt_opts[@]}" update -q ||
    skip "'apt-get update' failed or timed out"
  timeout "$SETUP_TIMEOUT" "${SUDO[@]}" apt-get "${apt_opts[@]}" install -y -q \
    --no-install-recommends gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user ||
    skip "'apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user' failed"
  have_tools || skip "packages installed but the tools are still missing"
fi
aarch64-linux-gnu-gcc --version | head -n 1
qemu-aarch64 --version | head -n 1

export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L $SYSROOT"

# Under emulation: the unit tests, the CLI's unit tests and every integration test except
# the ones whose code does not depend on the CPU. They run natively in the test step:
# - the end-to-end CLI runs (cli_*, model_cli_f16) and the whole-category evaluation, which
#   start the binary many times (5 of the step's 7 minutes under qemu);
# - the model-level tests of file handling, memory budgets, updates and the API
#   (model_api, model_fit_budget, model_update, model_roundtrip, model_f16_bank, model_file_*,
#   backbone_scratch_reuse, bad_inputs, reliability_files, fuzz_regressions: another 4½
#   minutes under qemu). The kernels they reach are the ones checked here directly
#   (kernels_*, backbone and embedding parity, kNN including the f16 bank, coreset), and
#   model_end_to_end and model_determinism still run the whole pipeline here.
# The integration tests are the modules tests/all/<name>.rs of one test crate, `all` (left
# out with `--skip <name>::`), and the crates of their own tests/<name>.rs (model_fit_budget).
skipped_under_qemu() {
  case "$1" in
    cli_* | model_cli_f16 | evaluate_synthetic) ;;
    model_api | model_fit_budget | model_update | model_roundtrip | model_f16_bank) ;;
    model_file_* | backbone_scratch_reuse | bad_inputs | reliability_files | fuzz_regressions) ;;
    *) return 1 ;;
  esac
}
qemu_tests=(--test all)
qemu_skips=()
for f in tests/all/*.rs; do
  name=$(basename "$f" .rs)
  if skipped_under_qemu "$name"; then qemu_skips+=(--skip "$name::"); fi
done
for f in tests/*.rs; do
  name=$(basename "$f" .rs)
  skipped_under_qemu "$name" || qemu_tests+=(--test "$name")
done
# The three large greedy-vs-plain coreset comparisons are skipped under emulation, for the
# reasons given at the x86-64 step below.
coreset_skips=(--skip coreset::accel_tests::heavy_duplicates --skip coreset::accel_tests::gaussian_blobs
  --skip coreset::accel_tests::uniform_random)

step "aarch64: cross-build library, CLI and the emulated tests (test profile)"
cargo test --target "$TARGET" --features cli --lib --bins "${qemu_tests[@]}" --no-run

step "aarch64: tests under qemu-aarch64 (NEON kernels)"
t0=$SECONDS
PATCHCORE_TEST_RUNNER="qemu-aarch64 -L $SYSROOT" PATCHCORE_EXPECT_SIMD=neon \
  cargo test --target "$TARGET" --features cli --lib --bins "${qemu_tests[@]}" -- \
  "${coreset_skips[@]}" "${qemu_skips[@]}"
echo "aarch64 qemu tests took $((SECONDS - t0)) s"

# The host build with the x86-64 CPU model `qemu64` (SSE2 only): both GEMM crates detect no
# AVX/FMA and run their portable kernels; simd_dispatch fails if they could see SIMD. Built
# with the test step's features, so that its artifacts are reused (no rebuild).
# Skipped here: the three large greedy-vs-plain coreset comparisons (about 4 of the step's
# 5 minutes under emulation). They run natively in the test step, and the portable coreset
# kernels they would reach here are checked bit for bit against the dispatched ones natively
# (coreset::pass::tests::dispatched_kernels_equal_portable_bit_for_bit and
# coreset::blocked::tests::block_kernels_follow_the_documented_order_bit_for_bit) and against the plain
# greedy at small sizes in this step (tiny_and_degenerate_banks_match_plain).
# The unit tests and the modules of tests/all named by filters (`name::` selects the module
# `name`), in two runs because the filters would apply to the unit tests too.
step "x86-64 without AVX/FMA under qemu (portable GEMM kernels)"
t0=$SECONDS
no_simd=(env PATCHCORE_EXPECT_SIMD=none
  CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER="qemu-x86_64 -cpu qemu64")
"${no_simd[@]}" cargo test --features cli --lib -- "${coreset_skips[@]}"
"${no_simd[@]}" cargo test --features cli --test all -- simd_dispatch:: kernels_gemm:: \
  kernels_conv:: kernels_pool:: knn_bruteforce:: knn_screening:: backbone_parity:: \
  embedding_parity:: kernels_int8:: backbone_int8:: kernels_bf16:: backbone_bf16::
echo "portable-kernel qemu tests took $((SECONDS - t0)) s"
