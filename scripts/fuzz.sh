#!/usr/bin/env bash
# Builds the fuzz targets (fuzz/, cargo-fuzz with libFuzzer, nightly toolchain) and runs each
# for SECONDS (default 2, as CI runs them: 20 s of fuzzing for the ten, plus each run's start)
# over a copy of its corpus, so the corpus in the repository only changes when someone
# minimizes it on purpose.
#
#   scripts/fuzz.sh                 # every target, 2 s each
#   scripts/fuzz.sh 600 dns_request # one target, 10 minutes
#
# A crash stops the script with libFuzzer's report and the input under fuzz/artifacts/<target>/.
# Without a nightly toolchain the targets cannot be built: the script says so and exits 0
# (an environment without nightly, not a failure of the code); without cargo-fuzz it fails.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds="${1:-2}"
shift || true
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-/var/tmp/edgemesh-fuzz-target}"
# Instrumented builds differ from the workspace's anyway; incremental data would only fill the disk.
export CARGO_INCREMENTAL=0

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  echo "fuzz: SKIPPED: no nightly toolchain (libFuzzer's instrumentation needs it: rustup toolchain install nightly)"
  exit 0
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: cargo-fuzz is not installed (cargo install --locked cargo-fuzz)" >&2
  exit 1
fi

# No sanitizer: no fuzzed parser reaches unsafe code of ours (forbidden but for the ebpf crate's maps
# and getsockopt and the binary's mallopt, none on a fuzzed path), so what the targets look for is
# panics, failed assertions, unbounded allocation and hangs; ASan (`-s address`) triples the
# build and halves the speed for memory errors only unsafe code in dependencies could make.
build=(cargo +nightly fuzz build --sanitizer none)
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo +nightly fuzz list)
start=$SECONDS
"${build[@]}"
echo "fuzz: built ${#targets[@]} targets in $((SECONDS - start)) s"

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for target in "${targets[@]}"; do
  mkdir -p "$scratch/$target"
  # New inputs go to the scratch directory (the first one); the repository's corpus is read only.
  # -rss_limit_mb: a parser that allocates without bound fails here rather than on a node.
  # In CI (CI=true) the mutations follow a fixed seed, so whether a run passes does not depend on
  # the draw: a crash found there is found again by the same command. Elsewhere each run explores anew.
  log="$scratch/$target.log"
  if cargo +nightly fuzz run --sanitizer none "$target" "$scratch/$target" "corpus/$target" -- \
    -max_total_time="$seconds" ${CI:+-seed=1} -rss_limit_mb=1024 -timeout=10 -print_final_stats=1 >"$log" 2>&1; then
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    rss=$(sed -n 's/^stat::peak_rss_mb: *//p' "$log")
    echo "fuzz: $target: ${runs:-?} runs in ${seconds} s, peak RSS ${rss:-?} MB"
  else
    tail -n 60 "$log" >&2
    echo "fuzz: $target FAILED (the input is under fuzz/artifacts/$target/)" >&2
    exit 1
  fi
done
echo "fuzz: ${#targets[@]} targets ran ${seconds} s each without a crash"
