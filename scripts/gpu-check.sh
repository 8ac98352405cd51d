#!/usr/bin/env bash
# The GPU check: the GPU-marked tests, then `canvasd bench` on full-size random-weight SDXL and Flux
# pipelines (built from their published architecture configs by canvasd.bench.random_pipelines: no
# downloads), printing per family the batching ratio at 8 concurrent requests, MFU and images/s.
#
#   scripts/gpu-check.sh                       # on a CUDA machine: full-size models on cuda
#   scripts/gpu-check.sh --device cpu --tiny   # anywhere: the same steps with tiny models
#
# Options: --device DEV (default cuda), --tiny, --families "sdxl flux", --requests N (per level,
# default 8), --quality Q (default low), --out DIR (default benchmarks/results/gpu-check-<time>),
# --work DIR (where the random pipelines are saved; default a temporary folder, removed at the end).
# Environment: PYTHON (default: python). Exit status: non-zero when a test or a bench run fails.
set -euo pipefail

DEVICE=cuda
TINY=0
FAMILIES="sdxl flux"
REQUESTS=8
QUALITY=low
OUT="benchmarks/results/gpu-check-$(date -u +%Y%m%d-%H%M%S)"
WORK=""
PY="${PYTHON:-python}"

while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE="$2"; shift 2 ;;
    --tiny) TINY=1; shift ;;
    --families) FAMILIES="$2"; shift 2 ;;
    --requests) REQUESTS="$2"; shift 2 ;;
    --quality) QUALITY="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --work) WORK="$2"; shift 2 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "gpu-check: unknown option $1" >&2; exit 2 ;;
  esac
done

if [ -z "$WORK" ]; then
  WORK="$(mktemp -d -t canvasd-gpu-check-XXXXXX)"
  trap 'rm -rf "$WORK"' EXIT
fi
mkdir -p "$OUT"

echo "== gpu-check: device $DEVICE, $([ $TINY = 1 ] && echo tiny || echo full-size) models, families: $FAMILIES"
"$PY" - <<PYEOF
import torch
print(f"torch {torch.__version__}; CUDA available: {torch.cuda.is_available()}"
      + (f"; {torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""))
PYEOF

echo "== GPU-marked tests (pytest -m gpu)"
set +e
"$PY" -m pytest -q -p no:cacheprovider -m gpu tests
rc=$?
set -e
if [ $rc -eq 5 ]; then
  echo "gpu-check: no GPU-marked tests were collected"
elif [ $rc -ne 0 ]; then
  echo "gpu-check: GPU-marked tests failed (exit $rc)" >&2
  exit $rc
fi

# Full size: the published configs in the dtype the family ships in; 1024x1024 through the OpenAI
# alias. Tiny: fp32, 64x64 through the local model id (the OpenAI alias allows only its presets).
for family in $FAMILIES; do
  if [ $TINY = 1 ]; then
    dtype=fp32; size=64x64; client="$family"; tiny_flag="--tiny"
  else
    case "$family" in sdxl) dtype=fp16 ;; *) dtype=bf16 ;; esac
    [ "$DEVICE" = cpu ] && dtype=fp32
    size=1024x1024; client=gpt-image-1; tiny_flag=""
  fi
  echo "== $family: building random weights ($dtype) in $WORK/$family"
  "$PY" -m canvasd.bench.random_pipelines "$family" "$WORK/$family" $tiny_flag --device "$DEVICE" --dtype "$dtype"
  echo "== $family: canvasd bench on $DEVICE"
  "$PY" -m canvasd.cli bench --model "$family=$WORK/$family" --device "$DEVICE" \
    --scenario http --scenario http-serial --concurrency 1,8 --requests "$REQUESTS" --stream off \
    --size "$size" --quality "$QUALITY" --client-model "$client" --out-dir "$OUT/$family"
  # each family's weights go before the next family's are written (disk space)
  [ -n "${KEEP_WEIGHTS:-}" ] || rm -rf "${WORK:?}/$family"
done

echo
echo "== gpu-check summary (device $DEVICE$([ $TINY = 1 ] && echo ', tiny models'))"
"$PY" - "$OUT" $FAMILIES <<'PYEOF'
import json, sys
from pathlib import Path
from canvasd.bench.report import headline

out, families = Path(sys.argv[1]), sys.argv[2:]
failed = False
for family in families:
    reports = sorted((out / family).glob("bench-*.json"))
    if not reports:
        print(f"{family}: no bench report"); failed = True; continue
    report = json.loads(reports[-1].read_text())
    profile = report.get("mfu_profile") or {}
    peak = profile.get("peak", {})
    print(f"{family}: {report['model']['path']} ({profile.get('device')}, {profile.get('dtype')}; "
          f"matmul peak {peak.get('tflops_per_s')} TFLOP/s)")
    for line in headline(report):
        print("  " + line)
    failed |= any(r["errors"] for r in report["results"])
    failed |= not all(r.get("mfu") and 0 < r["mfu"] <= 1 for r in report["results"])
print(f"reports: {out}")
sys.exit(1 if failed else 0)
PYEOF
