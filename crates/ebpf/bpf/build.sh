#!/usr/bin/env bash
# Compiles the fast path's BPF programs: bpf/build.sh [OUT]
# (default: the checked-in bpf/edgemesh.bpf.o). build.rs runs this when
# clang is installed; a test checks that the checked-in object is what
# this script makes from the source. Needs clang and libbpf-dev.
# -mcpu=v3: the round robin counter's atomic fetch-and-add.
set -euo pipefail
cd "$(dirname "$0")"
out="${1:-edgemesh.bpf.o}"
# Relative paths and a fixed compilation directory keep the object the
# same wherever the repository is checked out.
clang -O2 -g -target bpf -mcpu=v3 -I/usr/include/x86_64-linux-gnu \
  -fdebug-compilation-dir=. -fdebug-prefix-map="$PWD"=. \
  -c edgemesh.bpf.c -o "$out"
