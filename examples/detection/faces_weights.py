"""Writes mtcnn.safetensors: MTCNN's pretrained weights from the facenet-pytorch wheel.

    pip install --no-deps facenet-pytorch==2.6.0    # 1.9 MB; its pins would replace torch
    python faces_weights.py
"""

from pathlib import Path

from safetensors.torch import save_file

from prunelab.sources.models.mtcnn import MTCNN, load_mtcnn

out = Path(__file__).parent / "mtcnn.safetensors"
state = MTCNN(load_mtcnn()).state_dict()
save_file({k: v.contiguous() for k, v in state.items()}, str(out))
print(f"wrote {out} ({sum(v.numel() for v in state.values()):,} parameters)")
