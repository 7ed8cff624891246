"""Shipping a pruned model: export formats (one registry, :mod:`prunelab.ship.formats`) and
safe reloading; a run's stored cells export through :mod:`prunelab.ship.from_run`."""

from prunelab.ship import export as _export  # noqa: F401  (registers sparse, onnx, slim)
from prunelab.ship import hf as _hf  # noqa: F401  (registers hf: a transformers directory)
from prunelab.ship import hf_decoder as _hf_decoder  # noqa: F401  (registers hf-decoder)
from prunelab.ship import keras as _keras  # noqa: F401  (registers keras)
from prunelab.ship.formats import FORMATS, Exported, ExportJob

__all__ = ["FORMATS", "ExportJob", "Exported"]
