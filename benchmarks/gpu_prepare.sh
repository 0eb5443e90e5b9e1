#!/usr/bin/env bash
# Prepare, on the CPU machine, what benchmarks/gpu_check.sh needs on the borrowed GPU machine, which has no network:
#   .gpu/run  the demo's prompts, generations and filtered traces (the GPU parts train from them; ~2 min, ~5 MB)
#   .whl/     wheels of the Python packages the GPU image lacks (~50 MB, most of it bitsandbytes)
# Both are git-ignored through .git/info/exclude and travel with the call as carried paths:
#   run(command="OUT=$OUT bash benchmarks/gpu_check.sh", carry=[".whl", ".gpu/run"], timeout_s=600)
# The run tool carries 64 MiB at most: this prints the total. Why a script: a session lent a GPU has 15 minutes of
# device time and no second chance, and without these the GPU run skipped its training parts (and could not import
# trl) instead of measuring them.
# Usage (repo root, the project's venv active): bash benchmarks/gpu_prepare.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python}

for path in /.whl/ /.gpu/; do
    grep -qxF "$path" .git/info/exclude 2>/dev/null || echo "$path" >> .git/info/exclude
done

if [ ! -f .gpu/run/filtered/manifest.json ]; then
    "$PY" cli.py teacher generate tiny --out .gpu/run
    "$PY" cli.py teacher filter tiny --out .gpu/run
fi
# only the teacher's stages: a student trained here would be reused there, its figures the CPU's
find .gpu/run -mindepth 1 -maxdepth 1 ! -name prompts ! -name generations ! -name filtered -exec rm -rf {} +

# What the GPU image lacks (/work/.library/device/KINDS.md), at the versions the CPU tests run (pyproject.toml) or
# their requirements there; Python 3.12. bitsandbytes is published with the manylinux_2_24 tag only.
WHEELS=(trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 math-verify==0.9.0
        latex2sympy2_extended==1.11.0 antlr4-python3-runtime==4.13.2 bitsandbytes==0.50.2 liger-kernel==0.8.5
        pydantic==2.14.4 pydantic_core==2.50.5 typing-inspection==0.4.5 annotated-types==0.8.0 datasketch==2.0.0
        gguf==0.19.0)
mkdir -p .whl
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    --platform any -d .whl "${WHEELS[@]}"

total=$(du -sbc .whl .gpu/run | tail -n 1 | cut -f 1)
tree=$(git ls-files -z | du -bc --files0-from=- | tail -n 1 | cut -f 1)
echo "carried: .whl + .gpu/run $(( total / 1024 / 1024 )) MiB, tracked tree $(( tree / 1024 / 1024 )) MiB" \
     "(the run tool takes 64 MiB in all)"
