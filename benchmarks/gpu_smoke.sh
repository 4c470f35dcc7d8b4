#!/usr/bin/env bash
# CUDA smoke check (needs a GPU and stagekit importable): pretrain vae in 32-true / 16-mixed / bf16-mixed,
# DEC in bf16-mixed, and the SATURN chain (pretrain -> align -> evaluate) in each precision on the demo cells.
# Prints, per run, the device string from the bundle and what was learned.
set -euo pipefail
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import torch, lightning_fabric, scvi; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'scvi', scvi.__version__)"
D=stagekit/demo_data/pancreas_human_mouse.h5ad
for p in 32-true 16-mixed bf16-mixed; do
  python3 -m stagekit pretrain -p vae $D --label-key Group --accelerator cuda --precision $p --set training.epochs=30 --set training.batch_size=64 -q -o /tmp/o_vae_$p.stk
  python3 -m stagekit info /tmp/o_vae_$p.stk --json | python3 -c "import json,sys; b=json.load(sys.stdin); h=b.get('history',{}); print('$p', b.get('device'), 'elbo first/last', [round(x,1) for x in (h.get('train_elbo') or [0])[:1]+(h.get('train_elbo') or [0])[-1:]], 'val', round(b['final_metrics'].get('val_elbo',0),1), 'recon ratio', round(b['final_metrics'].get('recon_mse_ratio',0),3))"
done
python3 -m stagekit cluster-search /tmp/o_vae_bf16-mixed.stk --k 5 -q -o /tmp/o_cl.stk
python3 -m stagekit finetune -p dec /tmp/o_cl.stk --accelerator cuda --precision bf16-mixed --set training.epochs=10 -q -o /tmp/o_dec.stk
python3 -m stagekit info /tmp/o_dec.stk --json | python3 -c "import json,sys; b=json.load(sys.stdin); print('dec', b.get('device'), {k: round(v,3) for k,v in b['final_metrics'].items() if k.startswith('label_')})"
mkdir -p /tmp/demo; python3 -c "
from pathlib import Path; from stagekit.data.demo import DEMO_ORTHOLOGS, write_demo_inputs
write_demo_inputs(DEMO_ORTHOLOGS, Path('/tmp/demo'))"
for p in 32-true bf16-mixed 16-mixed; do
python3 -m stagekit pretrain -p saturn-small /tmp/demo/human.h5ad /tmp/demo/mouse.h5ad --protein-emb human=/tmp/demo/human_embeddings.npz --protein-emb mouse=/tmp/demo/mouse_embeddings.npz --label-key Group --accelerator cuda --precision $p -q -o /tmp/o_sat_$p.stk
python3 -m stagekit align /tmp/o_sat_$p.stk --accelerator cuda --precision $p --set training.epochs=20 --set training.batch_size=256 -q --write-h5ad /tmp/al_$p.h5ad -o /tmp/o_al_$p.stk
python3 -m stagekit evaluate /tmp/al_$p.h5ad --no-umap -o /tmp/rep_$p 2>/dev/null
python3 -c "import json; r=json.load(open('/tmp/rep_$p/metrics.json')); print('saturn $p', {k: round(v['balanced_accuracy'],3) for k,v in r['label_transfer'].items()}, 'mixing', round(r['integration']['species_mixing'],3))"
done
