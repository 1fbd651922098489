#!/usr/bin/env bash
# The GPU benchmarks in one go (issue 25): decoding, end to end and training on CUDA, bf16.
#
#   benchmarks/gpu.sh                 # from the repository root; PYTHON=... to pick the interpreter
#
# What it runs, each writing its NAME-cuda section into docs/benchmarks.md:
#   - decoding (greedy, beam 5; GPT-2 medium size, batch 256): polycap's default path,
#     polycap's static cache + torch.compile (CUDA graphs), generate(), and generate() with
#     its static cache (compiled by transformers); captions/s and, under the table, the share
#     of the memory-bandwidth bound each decode step reaches (bytes read per step x steps/s
#     / the device's peak from torch.cuda.get_device_properties);
#   - pipeline: images/s per stage, CLIP (ViT-B/32) encoding on the GPU, decode_jpeg on the GPU;
#   - end-to-end: 256 JPEGs to captions, polycap beside SmolVLM-256M and Florence-2-base (bf16);
#   - features and training (clipcap-cuda): training under bf16 autocast.
# Without CUDA it says so in one line and exits 3, having run nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python

if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 3)' 2>/dev/null
then
    echo "benchmarks/gpu.sh: no CUDA device (torch.cuda.is_available() is false); nothing run" >&2
    exit 3
fi
"$PYTHON" -c 'import torch; p = torch.cuda.get_device_properties(0); print(f"GPU: {p.name}, {p.total_memory / 2**30:.0f} GiB")'

# decoding at the GPU's batch size, with the static-cache + compiled paths of both sides
"$PYTHON" -m benchmarks.run --device cuda --precision bf16 --decoder medium --batch 256 \
    --only greedy beam "$@"
# images/s per stage (CLIP encoding on the GPU), features and training
"$PYTHON" -m benchmarks.run --device cuda --precision bf16 --only pipeline features train "$@"
# images in, captions out, against the peers
"$PYTHON" -m benchmarks.run --device cuda --precision bf16 --only end-to-end "$@"
