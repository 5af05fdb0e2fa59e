#!/usr/bin/env bash
# Export the models users bring (HF, dynamic-size vision, stateful VAD, Paddle OCR, Keras bytes)
# from every framework venv that exists.
#   bash tools/export_user_zoo.sh [--size tiny|full] [--out DIR]
# tiny (default) rewrites the bundled models/zoo/; full writes build/zoo/<framework>/.
# Venvs: VENV_EXPORT (torch + transformers), VENV_PADDLE, VENV_PADDLE_OLD, VENV_TF.
# A missing venv is skipped; a failing script does not stop the others (exit 1 at the end).
set -u
cd "$(dirname "$0")/.."
status=0
run() {  # run VENV SCRIPT ARGS...
    local venv=$1 script=$2; shift 2
    if [ ! -x "$venv/bin/python" ]; then
        echo "== skip $script: no venv at $venv (see tools/README.md, 'Models as users bring them')"
        return
    fi
    echo "== $script ($venv)"
    "$venv/bin/python" "tools/$script" "$@" || { echo "== $script failed (exit $?)"; status=1; }
}
for s in export_hf.py export_vision.py export_stateful.py export_decoder.py; do
    run "${VENV_EXPORT:-/work/venv-export}" "$s" "$@"
done
run "${VENV_PADDLE:-/work/venv-paddle}" export_paddle_ocr.py "$@"
run "${VENV_PADDLE_OLD:-/work/venv-paddle-old}" export_paddle_ocr.py "$@"
run "${VENV_TF:-/work/venv-tf}" export_keras_bytes.py "$@"
exit $status
