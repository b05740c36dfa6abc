#!/usr/bin/env bash
# One command for the first machine with a CUDA GPU: everything urpo can check there, offline, in under 8 minutes.
#
#   bash tools/gpu_check.sh [OUT_DIR]        # default OUT_DIR: ./gpu_check
#
# Runs `pytest -m gpu`, three bf16 training steps with the HF engine (and with vLLM when it is installed) on a random
# model of Qwen2.5-0.5B's architecture, and three FSDP2 steps over every visible GPU; prints tokens/s, step time and
# peak GPU memory next to `urpo plan`'s estimate, writes every figure to OUT_DIR/gpu_check.json and ends with one
# summary line. Without a CUDA GPU it says so and runs a CPU fallback (tiny model, one step) instead.
# Exit status: 0 every stage passed or was skipped, 1 a stage failed. Needs urpo's test extra (pytest) installed;
# PYTHON selects the interpreter (default: python).
set -uo pipefail
exec "${PYTHON:-python}" "$(dirname "$0")/gpu_check.py" "$@"
