"""The same sweep from Python (a notebook cell): your nn.Module and your Datasets, in memory."""

import sys
from pathlib import Path

from safetensors.torch import load_file

import prunelab
from prunelab.training import TrainConfig

here = Path(__file__).parent
sys.path.insert(0, str(here))
from my_data import load  # noqa: E402
from my_models import build  # noqa: E402

model = build()
model.load_state_dict(load_file(str(here / "model.safetensors")))  # your pretrained weights
train, val, test = load()

out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("runs/notebook")
result = prunelab.sweep(
    model,
    train=train,
    val=val,
    test=test,
    levels=[0.5, 0.8, 0.9],
    methods=["magnitude", "wanda"],
    seeds=[0, 1],
    finetune=TrainConfig(epochs=1),
    out=out,
)
print(result.results()[["method", "level", "seed", "accuracy"]].to_string(index=False))
print(result.recommend(max_drop=0.5).summary())
print("report:", result.report())
print(
    "exported:", result.export(out / "model-sparse.safetensors", level=0.8, method="magnitude").path
)
