#!/usr/bin/env bash
# Install what the project needs into the current Python environment.
# - torch: if none is installed, the CPU build (2.13.0) so that
#   CI and laptops don't pull several GB of CUDA packages. GPU machines bring their own torch.
# - DeepSpeed builds from source and imports torch in its setup, hence --no-build-isolation;
#   DS_BUILD_OPS=0 defers its CUDA ops to JIT on the GPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."
python -c "import torch" 2>/dev/null || python -m pip install -q torch==2.13.0
DS_BUILD_OPS=0 python -m pip install -q --no-build-isolation -r requirements.txt
