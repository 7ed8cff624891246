"""Stands in for *your* training: writes detector.safetensors, the pretrained detector to prune.

Trains ``my_detector.build()`` with its own losses on the training part of data/ (the
images prunelab's ``coco`` reader puts in the train split, so validation and test stay unseen).

    python make_weights.py [EPOCHS]
"""

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from prunelab.sources.data.coco import read_coco

here = Path(__file__).parent
sys.path.insert(0, str(here))
from my_detector import build  # noqa: E402

epochs = int(sys.argv[1]) if len(sys.argv) > 1 else 30
data = read_coco(here / "data" / "annotations.json", images=here / "data" / "images",
                 grayscale=True)  # fmt: skip
torch.manual_seed(0)
model = build().train()
opt = torch.optim.Adam(model.parameters(), lr=3e-3)
train = data.train
for _ in range(epochs):
    for idx in torch.randperm(len(train)).split(16):
        batch = train.take(idx)
        losses = model(batch.pixels(), batch.targets())
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
out = here / "detector.safetensors"
save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out))
print(f"wrote {out} (last loss {float(sum(losses.values())):.3f})")
