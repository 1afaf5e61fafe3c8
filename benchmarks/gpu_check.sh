#!/usr/bin/env bash
# GPU check for a hospital-class GPU: CUDA tests, s/kimg + peak memory per preset, and a short
# 128² phantom run showing the class condition learned. Budget: < 8 minutes on one H100/A100.
#
# Needs (a bare machine with the repository copied):
#   - python ≥ 3.11 with a CUDA build of torch (≥ 2.4) and this package's dependencies:
#       numpy scipy scikit-learn pillow pydicom cryptography rich typer flwr opacus pytest
#     e.g. `python3 -m pip install -e '.[dev]'` (keeps an installed CUDA torch), or carry a
#     prepared virtual environment and point PYTHON at it.
#   - nothing from the network at run time.
# Usage (from the repository root):
#   PYTHON=.venv/bin/python OUT=/tmp/gpu-check bash benchmarks/gpu_check.sh
# Rehearsal on a CPU (tiny sizes, same code paths, numbers meaningless):
#   DEVICE=cpu bash benchmarks/gpu_check.sh
# Only some steps (a short device lease): ONLY="environment cuda_tests gan_bench_28" …
# gan_bench_28 (off unless named in ONLY): the lean SpineGAN on PneumoniaMNIST (DATA=path of
# pneumoniamnist_trainval.npz) on the device against the same with ema_kimg=10, interleaved,
# snapshots at GAN_BUDGETS minutes, each scored by a CNN trained on its images (issue 12).
# Every step runs under its own `timeout` and the script goes on after a failure; the summary
# is $OUT/summary.md (and summary.json); each step's log is $OUT/<step>.log.
set -u
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
OUT="${OUT:-/tmp/gpu-check}"
DEVICE="${DEVICE:-cuda}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
if [ "$DEVICE" = cpu ]; then
  # Rehearsal: tiny nets, one thread (a shared CPU's spinning OpenMP threads cost ~10×),
  # limits doubled (CPU speed is not what is checked).
  export OMP_NUM_THREADS=1
  TINY="--tiny"; QMIN=0.3; QIMG=200; STEPS=2; WARM=1; CNN_MIN=0.3; X=2
else
  TINY=""; QMIN=2.0; QIMG=2000; STEPS=32; WARM=4; CNN_MIN=0.75; X=1
fi
declare -a NAMES RCS SECS
ONLY="${ONLY:-environment cuda_tests speed_gpu_presets speed_cpu_preset_on_device quality_128}"
step() {  # step NAME TIMEOUT_S COMMAND...
  local name="$1" limit="$2"; shift 2
  case " $ONLY " in *" $name "*) ;; *) return 0 ;; esac
  local t0=$SECONDS
  echo "== $name (limit ${limit}s): $*" | tee -a "$OUT/progress.log"
  timeout --kill-after=10 "$((limit * X))" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  NAMES+=("$name"); RCS+=("$rc"); SECS+=("$((SECONDS - t0))")
  echo "   rc=$rc in $((SECONDS - t0)) s" | tee -a "$OUT/progress.log"
  tail -n 5 "$OUT/$name.log"
}

step environment 60 "$PY" -c "
import sys, torch, platform
print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda build', torch.version.cuda)
print('cuda available', torch.cuda.is_available(), 'devices', torch.cuda.device_count())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print('gpu', p.name, round(p.total_memory / 2**30, 1), 'GiB', 'bf16', torch.cuda.is_bf16_supported())
print('cpu', platform.processor() or platform.machine())
"
if [ "$DEVICE" = cpu ]; then
  # The CUDA tests skip themselves without a GPU: the rehearsal checks they are collected.
  step cuda_tests 60 "$PY" -m pytest -m cuda -q -p no:cacheprovider tests/node/test_cuda.py tests/node/test_speed.py
else
  step cuda_tests 120 "$PY" -m pytest -m cuda -q -p no:cacheprovider tests/node/test_cuda.py tests/node/test_speed.py
fi
rm -f "$OUT/speed.jsonl"
step speed_gpu_presets 150 "$PY" benchmarks/gpu_bench.py speed --device "$DEVICE" $TINY \
  --presets gpu-64,gpu-128,gpu-256,gpu-512 --steps "$STEPS" --warmup "$WARM" --out "$OUT/speed.jsonl"
step speed_cpu_preset_on_device 60 "$PY" benchmarks/gpu_bench.py speed --device "$DEVICE" $TINY \
  --presets cpu@64,cpu@128 --steps "$STEPS" --warmup "$WARM" --out "$OUT/speed.jsonl"
step quality_128 270 "$PY" benchmarks/gpu_bench.py quality --device "$DEVICE" $TINY --res 128 \
  --minutes "$QMIN" --images "$QIMG" --cnn-minutes "$CNN_MIN" --out "$OUT/quality.json"
if [ -n "${DATA:-}" ]; then
  step gan_bench_28 "${GAN_LIMIT:-420}" "$PY" benchmarks/gan_bench.py --device "$DEVICE" \
    --data "$DATA" --out "$OUT/gan-bench" --models spinegan,spinegan-ema10 \
    --variant spinegan-ema10=spinegan:ema_kimg=10 --budgets "${GAN_BUDGETS:-1,2}" \
    --slice-seconds 15
  cp "$OUT/gan-bench/results.json" "$OUT/gan_bench.json" 2>/dev/null
  rm -rf "$OUT/gan-bench"
fi

"$PY" - "$OUT" "${NAMES[*]}" "${RCS[*]}" "${SECS[*]}" <<'PYEOF'
import json, sys
from pathlib import Path
out, names, rcs, secs = Path(sys.argv[1]), sys.argv[2].split(), sys.argv[3].split(), sys.argv[4].split()
steps = [{"step": n, "rc": int(r), "seconds": int(s)} for n, r, s in zip(names, rcs, secs)]
speed = [json.loads(l) for l in (out / "speed.jsonl").read_text().splitlines()] if (out / "speed.jsonl").exists() else []
quality = json.loads((out / "quality.json").read_text()) if (out / "quality.json").exists() else None
env = (out / "environment.log").read_text() if (out / "environment.log").exists() else ""
json.dump({"steps": steps, "speed": speed, "quality": quality, "environment": env},
          open(out / "summary.json", "w"), indent=2)
lines = ["# synthlearn GPU check", "", "```", env.strip(), "```", "", "| step | rc | s |", "|---|---|---|"]
lines += [f"| {s['step']} | {s['rc']} | {s['seconds']} |" for s in steps]
lines += ["", "| preset | res | batch | params G/D (M) | s/kimg | img/s | peak GiB | estimated GiB | error |", "|---|---|---|---|---|---|---|---|---|"]
for r in speed:
    lines.append(f"| {r.get('preset')} | {r.get('resolution', '')} | {r.get('batch', '')} | "
                 f"{r.get('params_G_M', '')}/{r.get('params_D_M', '')} | {r.get('s_per_kimg', '')} | "
                 f"{r.get('img_per_s', '')} | {r.get('peak_GiB', '')} | {r.get('estimated_GiB', '')} | {r.get('error', '')} |")
lines += ["", "Anchor: StyleGAN2-ADA 256² ≈ 12.5 s/kimg on one A100 (≈ 22 on a V100).", ""]
if quality:
    lines += ["Quality (128² phantoms): " + json.dumps(quality)]
(out / "summary.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PYEOF
echo "summary: $OUT/summary.md"
