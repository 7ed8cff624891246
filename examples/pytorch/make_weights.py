"""Stands in for *your* training: writes model.safetensors, the pretrained model to prune."""

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).parent))
from my_data import load  # noqa: E402
from my_models import build  # noqa: E402

torch.manual_seed(0)
model, (train, _, _) = build(), load()
opt = torch.optim.Adam(model.parameters(), lr=3e-3)
loader = torch.utils.data.DataLoader(train, batch_size=64, shuffle=True)
for _ in range(15):
    for x, y in loader:
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "model.safetensors"
save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out))
print(f"wrote {out}")
