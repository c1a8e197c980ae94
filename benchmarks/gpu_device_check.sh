#!/bin/bash
# The GPU check in one call on a lent device machine (issue 18): it has torch, numba and
# pytest but no network, so the few wheels it lacks travel in .devwheels/ (git-ignored):
#   mkdir -p .devwheels && pip download --only-binary=:all: --python-version 3.12 \
#       --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 --no-deps -d .devwheels \
#       cryptography cffi pycparser pycryptodome dp-accounting opacus dm-tree
# then, through the device tool: run `bash benchmarks/gpu_device_check.sh` carrying .devwheels.
# It runs `benchmarks.gpu_check` (bit-exactness, the H200 table) and the CUDA test variants,
# and leaves both logs under $OUT.
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
cd "$(dirname "$0")/.." || exit 2
start=$(date +%s)
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -m pip install --no-deps --no-index -q .devwheels/*.whl 2>&1 | grep -v -i warning | tail -3
# the image's setuptools cannot build an editable install offline: map the packages by links
ln -sfn ../kernels mpcft/kernels; ln -sfn ../protocols mpcft/protocols; export PYTHONPATH=$PWD
python3 -c "import torch, numba, numpy, transformers, mpcft.kernels; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'numba', numba.__version__, 'numpy', numpy.__version__, 'transformers', transformers.__version__)"
timeout 240 python3 -m benchmarks.gpu_check --results "$OUT/results.md" > "$OUT/gpu_check.log" 2>&1
echo "gpu_check rc=$? after $(( $(date +%s) - start )) s"
grep -E "^(PASS|FAIL)|block fwd|^\||checks passed|^device" "$OUT/gpu_check.log"
# the test files with CUDA variants (the others need flwr, not carried)
timeout 300 python3 -m pytest -q -n 8 -p no:cacheprovider --timeout 150 -k cuda \
    tests/kernels/test_digit_matmul.py tests/nn/test_evaluation.py tests/nn/test_gradients.py \
    tests/protocols/test_arithmetic.py tests/protocols/test_comparison.py \
    tests/protocols/test_king_opening.py tests/protocols/test_nonlinear.py > "$OUT/pytest.log" 2>&1
echo "pytest rc=$? after $(( $(date +%s) - start )) s"
tail -3 "$OUT/pytest.log"
