#!/usr/bin/env bash
# Peer comparison for issue 20: pixlake's embed job vs `clip-retrieval inference` (PyPI
# clip-retrieval 2.45.0) on the same photos and the same ViT-B-32 checkpoint.
# Builds, offline except for the package registries, and idempotently:
#   build/peer-venv            clip-retrieval in its own venv, pinned by bench/peer-requirements.txt
#                              (torch 2.14.1 / torchvision 0.29.1, which this machine's pip serves from disk)
#   build/peer/vitb32-random.pt  open_clip ViT-B-32 with random weights (torch.manual_seed(0)), a state_dict
# A second run only checks (a stamp holds the requirements' hash) and returns in seconds.
# Then, e.g. (no network is touched; the env vars are only a guard):
#   HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=disabled build/peer-venv/bin/clip-retrieval inference \
#     --input_dataset DIR --output_folder OUT --input_format files --enable_text False --enable_metadata False \
#     --clip_model "open_clip:ViT-B-32/$PWD/build/peer/vitb32-random.pt" --batch_size 16 --num_prepro_workers 2
# (model name = text before the first '/', checkpoint = all after it, so an absolute path gives '//'.)
set -euo pipefail
cd "$(dirname "$0")/.."
venv=build/peer-venv req=bench/peer-requirements.txt ckpt=build/peer/vitb32-random.pt
stamp=$venv/.peer-req.sha256
want=$(sha256sum "$req" | cut -d' ' -f1)

if [[ ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
  [[ -x $venv/bin/python ]] || python3 -m venv "$venv"
  pip=("$venv/bin/pip" install -q --disable-pip-version-check)
  # torch 2.14.1 requires setuptools>=77.0.3; clip-anytorch needs pkg_resources (setuptools<82)
  "${pip[@]}" "$(grep -E '^setuptools==' "$req")" "$(grep -E '^wheel==' "$req")"
  "${pip[@]}" torch==2.14.1 torchvision==0.29.1
  "${pip[@]}" -r "$req"
  "$venv/bin/pip" check
  echo "$want" >"$stamp"
fi

if [[ ! -s $ckpt ]]; then
  mkdir -p "$(dirname "$ckpt")"
  "$venv/bin/python" - "$ckpt" <<'EOF'
import os, sys, tempfile, torch, open_clip
out = sys.argv[1]
torch.manual_seed(0)
model = open_clip.create_model("ViT-B-32", pretrained=None)
tmp = tempfile.mkdtemp(dir=os.path.dirname(out))  # same file name: torch.save's archive is named after it
torch.save(model.state_dict(), os.path.join(tmp, os.path.basename(out)))
os.replace(os.path.join(tmp, os.path.basename(out)), out); os.rmdir(tmp)
EOF
fi
# bytes are reproducible (open_clip 2.32.0 and 3.3.0 both give these tensors for seed 0)
echo "9bf0cac490f6617b8e33dfd205f33a1779469a2dfbf9fd0536af8b8eec98a5cd  $ckpt" | sha256sum --quiet -c - \
  || echo "warning: $ckpt differs from the recorded checkpoint" >&2
"$venv/bin/python" -c "import clip_retrieval, open_clip, torch; from importlib.metadata import version as v
print('peer venv ok: clip-retrieval', v('clip-retrieval'), 'open_clip', open_clip.__version__, 'all_clip', v('all_clip'), 'torch', torch.__version__)" 2>/dev/null
echo "checkpoint: $ckpt ($(du -h "$ckpt" | cut -f1))"
