#!/usr/bin/env bash
# The student stage's GPU checks in one short run, for the sessions that are lent a GPU for a few minutes.
#
# Why one script: a borrowed GPU is scarce (minutes), so everything that cannot run on a CPU runs here in one go,
# each part under its own time limit so one hang costs only its part:
#   varlen      packed attention alone (benchmarks/bench_varlen_attention.py): stock masked SDPA, per-trace SDPA
#               with and without cuDNN, torch's flash varlen kernel, on fresh trace lengths each step.
#   packing     padding-free packed training of the tiny student through the trainer, and the same run padded
#               (packing-padded: the baseline at the same batch and steps); packing-noliger, packing-sdpa: probes
#               that bisect a slowdown there. Runs before pipeline, the longest part.
#   mfu         MFU of a Qwen2.5-1.5B-shaped training step at 16k tokens (benchmarks/gpu_mfu.py): plain SDPA,
#               Liger kernels, cuDNN attention, packed documents through sdpa_varlen (mfu-packed: only that one;
#               mfu32k: 32k tokens with gradient checkpointing).
#   pipeline    the demo pipeline continued on the GPU from carried, already filtered traces (RUN, default
#               .gpu/run): train in bf16 (+ Liger when installed), quantize with bitsandbytes int8, evaluate, export.
#   qlora       the tiny teacher in bitsandbytes NF4 with LoRA adapters (students/tiny-arith-qlora.yaml), merged
#               at save, then evaluated.
#   fsdp2       FSDP2 through the shipped configs/accelerate/fsdp2.yaml on the GPUs present.
#   gkd         GKD (on-policy logit distillation) in bf16 on the GPU.
#
# Usage (repo root, GPU machine): OUT=/tmp/gpu_out bash benchmarks/gpu_check.sh
# BUDGET (default 540 s): the whole run's seconds; each part's limit is cut to what is left of it (a part with under
# 20 s left is skipped), so the run ends by itself, summary printed, inside a 600 s command.
# Before the GPU call, on the CPU machine: `bash benchmarks/gpu_prepare.sh`. It writes RUN (default .gpu/run: the
# demo's prompts, generations and filtered stages; without them pipeline and packing are skipped) and .whl/ (the
# wheels the GPU image lacks, ~50 MB), git-ignored; then run(command="OUT=$OUT bash benchmarks/gpu_check.sh",
# carry=[".whl", ".gpu/run"], timeout_s=600). Each training part trains in a fresh .gpu/<part> folder (a
# complete one left by an earlier call would be reused, its figures not this GPU's).
# Python packages the machine lacks can come as wheels in .whl/ (installed into /tmp/site, put first on PYTHONPATH).
# Results: OUT/log (everything), OUT/mfu.jsonl, OUT/report.json, OUT/*manifest.json (metrics and settings; each
# training manifest also holds the memory plan, settings.planned_gib_per_gpu, beside the peak, gpu_peak_gib).
set -u
OUT=${OUT:-$PWD/gpu_out}
RUN=${RUN:-.gpu/run}
# The default is every part but mfu32k. On the H200 (2026-11-29, measured over two calls) its parts' times add up
# to about 500 s: the wheels' install ~30 s, varlen ~25 s, the four MFU variants ~100 s, packing with its padded
# twin ~65 s, pipeline ~70 s, qlora with its eval ~55 s, fsdp2 ~40 s, gkd ~80 s (README). What BUDGET cannot fit is skipped, gkd first; a subset reruns it.
PARTS=${PARTS:-varlen mfu packing pipeline qlora fsdp2 gkd}
BUDGET=${BUDGET:-540}
PY=${PY:-python3}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/log") 2>&1
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false WANDB_MODE=disabled
t0=$(date +%s)
want() { [[ " $PARTS " == *" $1 "* ]]; }
say() { echo; echo "=== [$(( $(date +%s) - t0 ))s] $*"; }
part() {  # part NAME SECONDS CMD...: run one check under a time limit, keep its tail, record its exit status
    local name=$1 limit=$2; shift 2
    rm -f "/tmp/part-$name.log"  # a warm machine keeps the last call's: never read back a stale part's output
    local left=$(( BUDGET - ($(date +%s) - t0) - 15 ))  # 15 s: timeout's -k grace and the summary
    if (( left < 20 )); then
        say "$name: skipped, ${left}s left of BUDGET=${BUDGET}s"
        echo "$name skipped-budget" >> "$OUT/parts.txt"
        return 0
    fi
    (( limit > left )) && limit=$left
    say "$name (limit ${limit}s): $*"
    timeout -k 10 "$limit" "$@" > "/tmp/part-$name.log" 2>&1
    local rc=$?
    grep -v -E "Warning|warn\(|^\s*$" "/tmp/part-$name.log" | tail -n 25
    echo "--- $name: exit $rc after $(( $(date +%s) - t0 ))s"
    echo "$name $rc" >> "$OUT/parts.txt"
}

say "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
if compgen -G ".whl/*.whl" > /dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        2>&1 | grep -v -i "warning" | tail -n 3
    export PYTHONPATH=/tmp/site:$PWD
    if ! $PY -c "import datasets" 2>/dev/null && compgen -G ".whl/alt/*.whl" > /dev/null; then
        echo "datasets does not import with this pyarrow: installing .whl/alt"
        $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
            .whl/alt/*.whl 2>&1 | grep -v -i "warning" | tail -n 3
    fi
else
    export PYTHONPATH=$PWD
fi
$PY - <<'EOF'
import importlib
for name in ["torch", "transformers", "trl", "peft", "accelerate", "datasets", "bitsandbytes", "liger_kernel",
             "flash_attn", "triton"]:
    try:
        print(f"{name} {importlib.import_module(name).__version__}")
    except Exception as exc:  # noqa: BLE001 - a report of what is there, not a check
        print(f"{name} -: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}")
EOF

# 0. Packed attention alone: the suspected cause of the packed slowdown (2) is cuDNN planning per trace length
want varlen && part varlen 120 $PY benchmarks/bench_varlen_attention.py

# 1. MFU
variants=()
want mfu && variants=("" "--liger" "--liger --sdpa-backend cudnn" "--liger --docs 8")
want mfu-packed && ! want mfu && variants=("--liger --docs 8")  # packed documents only
if (( ${#variants[@]} )) && ! $PY -c "import liger_kernel.transformers" 2>/dev/null; then
    echo "liger_kernel does not import (not carried in .whl/?): the MFU variants run without --liger"
    declare -A seen=(); plain=()
    for v in "${variants[@]}"; do
        v=${v/--liger/}; v=${v# }
        [ -n "${seen[x$v]+1}" ] || { seen[x$v]=1; plain+=("$v"); }
    done
    variants=("${plain[@]}")
fi
for variant in ${variants[@]+"${variants[@]}"}; do  # (empty-safe under set -u)
    # shellcheck disable=SC2086
    part "mfu${variant// /}" 150 $PY benchmarks/gpu_mfu.py $variant
    grep -s '^{' "/tmp/part-mfu${variant// /}.log" >> "$OUT/mfu.jsonl"
done

# 1b. 32k tokens (the R1-Distill context) with gradient checkpointing
if want mfu32k; then
    part mfu32k 150 $PY benchmarks/gpu_mfu.py --liger --tokens 32768 --gradient-checkpointing
    grep -s '^{' /tmp/part-mfu32k.log >> "$OUT/mfu.jsonl"
fi

if [ ! -d "$RUN/filtered" ] && { want pipeline || want packing || want qlora || want fsdp2 || want gkd; }; then
    say "no $RUN/filtered: the parts that train the tiny student are skipped (see the header: prepare RUN first)"
    echo "no-RUN-filtered skipped" >> "$OUT/parts.txt"
fi

# 2. Padding-free packing through the trainer (sdpa_varlen, or flash-attention's varlen kernel where installed).
# On the H200 (2026-11-28, no flash-attn, Liger on) this ran at ~1,100 tokens/s against ~113,000 unpacked, when
# sdpa_varlen looped over the traces with torch's default SDPA backends: torch picked cuDNN attention, which plans
# a kernel per new trace length (varlen's "per trace, cuDNN allowed" row: 1.5 s a step). sdpa_varlen now takes
# torch's flash varlen kernel on GPUs: 21,044 packed vs 5,062 padded tokens/s on 2026-11-29. If packing is ever
# slow again, the probes bisect it: Liger off (packing-noliger), stock mask-based SDPA instead of sdpa_varlen
# (packing-sdpa); compare their tokens/s lines with packing's.
# packing-padded: the same run unpacked (padded batches), the baseline at the same batch size and steps.
declare -A PROBE=([packing]="student.train.packing=true" [packing-padded]="student.train.packing=false"
                  [packing-noliger]="student.train.use_liger_kernel=false"
                  [packing-sdpa]="student.train.attn_implementation=sdpa")
for variant in packing packing-padded packing-noliger packing-sdpa; do
    probe=$variant; [ "$variant" = packing-padded ] && probe=packing  # the padded twin comes with packing
    if want $probe && [ -d "$RUN/filtered" ]; then
        extra=(--set "${PROBE[$variant]}")
        [ "$variant" = packing-noliger ] || [ "$variant" = packing-sdpa ] && extra+=(--set student.train.packing=true)
        rm -rf ".gpu/$variant" && mkdir -p ".gpu/$variant" && cp -r "$RUN/filtered" ".gpu/$variant/"
        part "$variant" 120 "$PY" cli.py student train tiny --out ".gpu/$variant" \
            --set student.train.per_device_train_batch_size=8 --set student.train.max_steps=60 \
            --set student.train.logging_steps=20 "${extra[@]}"
        cp ".gpu/$variant/student/manifest.json" "$OUT/$variant-manifest.json" 2>/dev/null
    fi
done

# 2b. The demo pipeline, continued on the GPU (its prompts, generations and filter came with the tree)
if want pipeline && [ -d "$RUN/filtered" ]; then
    part pipeline 300 "$PY" cli.py run tiny --out "$RUN"
    cp "$RUN/report.json" "$OUT/report.json" 2>/dev/null
    cp "$RUN/student/manifest.json" "$OUT/student-manifest.json" 2>/dev/null
fi

# 3. QLoRA (NF4 base, LoRA adapters, merged at save), then the R1 protocol on the merged model
if want qlora && [ -d "$RUN/filtered" ]; then
    rm -rf .gpu/qlora && mkdir -p .gpu/qlora && cp -r "$RUN/filtered" .gpu/qlora/
    part qlora 200 $PY cli.py student train tiny --out .gpu/qlora --set student=tiny-arith-qlora
    cp .gpu/qlora/student/manifest.json "$OUT/qlora-manifest.json" 2>/dev/null
    part qlora-eval 120 $PY cli.py eval tiny --out .gpu/qlora --model .gpu/qlora/student/model --label qlora
fi

# 4. FSDP2 through the shipped config, on the GPUs here
if want fsdp2 && [ -d "$RUN/filtered" ]; then
    gpus=$($PY -c "import torch; print(torch.cuda.device_count())")
    rm -rf .gpu/fsdp2 && mkdir -p .gpu/fsdp2 && cp -r "$RUN/filtered" .gpu/fsdp2/
    part fsdp2 200 $PY -m accelerate.commands.launch --config_file configs/accelerate/fsdp2.yaml \
        --num_processes "$gpus" -m distill.student.launch tiny --out .gpu/fsdp2 --set student.train.max_steps=300
    cp .gpu/fsdp2/student/manifest.json "$OUT/fsdp2-manifest.json" 2>/dev/null
fi

# 5. GKD (on-policy logit distillation from the tiny teacher) in bf16: generation and the JSD loss on the GPU
if want gkd && [ -d "$RUN/filtered" ]; then
    rm -rf .gpu/gkd && mkdir -p .gpu/gkd && cp -r "$RUN/filtered" .gpu/gkd/
    part gkd 150 $PY cli.py student train tiny --out .gpu/gkd --set student.train.distill_method=gkd \
        --set student.train.max_steps=100
    cp .gpu/gkd/student/manifest.json "$OUT/gkd-manifest.json" 2>/dev/null
fi

say "done"
cat "$OUT/parts.txt"
