#!/usr/bin/env bash
# Export the zoo from every framework whose venv exists, then print the summary table.
#   bash tools/export_all.sh [--nets resnet50,bert] [--out build/zoo]
# Venv locations can be overridden: VENV_TORCH, VENV_TF, VENV_MXNET, VENV_PADDLE.
# A missing venv is skipped; a failing script does not stop the others (exit code 1 at the end).
set -u
cd "$(dirname "$0")/.."
status=0
run() {  # run VENV SCRIPT ARGS...
    local venv=$1 script=$2; shift 2
    if [ ! -x "$venv/bin/python" ]; then
        echo "== skip $script: no venv at $venv (see tools/README.md, 'Export zoo')"
        return
    fi
    echo "== $script ($venv)"
    "$venv/bin/python" "tools/$script" "$@" || { echo "== $script failed (exit $?)"; status=1; }
}
run "${VENV_TORCH:-/work/venv}" export_torch.py "$@"
run "${VENV_TF:-/work/venv-tf}" export_keras.py "$@"
run "${VENV_MXNET:-/work/venv-mxnet}" export_mxnet.py "$@"
run "${VENV_PADDLE:-/work/venv-paddle}" export_paddle.py "$@"
out=build/zoo
prev=""
for a in "$@"; do [ "$prev" = "--out" ] && out=$a; prev=$a; done
python3 tools/export_report.py --out "$out"
exit $status
