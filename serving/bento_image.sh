#!/usr/bin/env bash
# The Bento image's last install step (bentofile.yaml docker.setup_script), after the lock: as in
# `make install`, torchrec without its dependencies, because it declares fbgemm-gpu (the CUDA
# build) and the lock's fbgemm-gpu-cpu stands in for it. Keep the pin equal to
# requirements-nodeps.lock's (tests/serving/test_bento.py checks it).
set -euo pipefail
uv pip install --no-deps torchrec==1.8.0
