"""Export format ``hf``: a transformers directory that ``from_pretrained`` loads.

The pruned model (masks folded into plain weights) is saved with ``save_pretrained`` beside its
tokenizer. Its config describes what was kept:

* masks only (unstructured, N:M) or the same number of FFN neurons removed from every block,
  all heads kept: a **standard directory** (``intermediate_size`` updated), loaded as usual;
* any attention head removed, or blocks of different widths: BERT's config cannot say it (its
  head size is ``hidden_size / num_attention_heads``, and transformers 5 has no
  ``pruned_heads``), so the directory also holds ``modeling_prunelab.py``
  (:mod:`prunelab.ship.hf_remote`), named in ``auto_map``, with ``prunelab_blocks`` in the
  config: load it with ``from_pretrained(dir, trust_remote_code=True)``.

A sentence encoder is written as a sentence-transformers directory (``modules.json``, pooling,
normalisation). Before the directory appears at ``out`` it is reloaded and its outputs compared
with the pruned model's; a mismatch leaves nothing behind.
"""

from __future__ import annotations

import copy
import inspect
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from prunelab.errors import PrunelabError
from prunelab.prune.apply import folded_copy
from prunelab.ship import hf_remote
from prunelab.ship.export import current_umask
from prunelab.ship.formats import FORMATS, Exported, ExportJob
from prunelab.sources.hf import transformers_module
from prunelab.sources.hfdir import SequenceClassifier
from prunelab.sources.models.encoder import TextEncoder

REMOTE_FILE = "modeling_prunelab.py"
ATOL = 1e-4  # reloaded vs pruned outputs, relative to the outputs' scale


def transformers_part(model: nn.Module) -> tuple[str | None, nn.Module, Any, str]:
    """``(attribute holding it or None, the transformers model, tokenizer, Auto class name)``."""
    if isinstance(model, SequenceClassifier):
        return "model", model.model, model.tokenizer, "AutoModelForSequenceClassification"
    if isinstance(model, TextEncoder):
        return "bert", model.bert, model.tokenizer, "AutoModel"
    if hasattr(model, "config") and hasattr(model, "save_pretrained"):
        causal = type(model).__name__.endswith("ForCausalLM")
        return None, model, None, "AutoModelForCausalLM" if causal else "AutoModel"
    raise PrunelabError(
        f"format 'hf' writes transformers models (a model directory, or a factory returning "
        f"one); this model is a {type(model).__name__}: use --format sparse or onnx"
    )


def block_sizes(inner: nn.Module) -> list[dict[str, int]]:
    """Kept heads and FFN neurons of every BERT-style block (none for other architectures)."""
    return [
        {"heads": int(b.attention.self.num_attention_heads),
         "ffn": int(b.intermediate.dense.out_features)}
        for b in hf_remote.bert_blocks(inner)
    ]  # fmt: skip


def remote_code(base: str) -> str:
    """The text of ``modeling_prunelab.py``: :mod:`hf_remote` and the pruned class of ``base``."""
    source = inspect.getsource(hf_remote)
    tail = f"import transformers  # noqa: E402\n\nPruned{base} = pruned_class(transformers.{base})"
    return f"{source}\n\n{tail}\n"


def describe_sizes(inner: nn.Module, auto: str) -> str:
    """Update the model's config for its kept sizes; ``"standard"`` or ``"remote code"``."""
    cfg, blocks = inner.config, block_sizes(inner)
    uniform = all(b == blocks[0] for b in blocks)
    if not blocks or (uniform and blocks[0]["heads"] == int(cfg.num_attention_heads)):
        if blocks:
            cfg.intermediate_size = blocks[0]["ffn"]
        return "standard"
    base = type(inner).__name__
    cfg.prunelab_blocks = blocks
    cfg.auto_map = {auto: f"{REMOTE_FILE.removesuffix('.py')}.Pruned{base}"}
    return "remote code"


def _write_st_files(encoder: TextEncoder, out: Path) -> None:
    """modules.json, pooling and normalisation of a sentence-transformers directory."""
    kinds = [("", "Transformer"), ("1_Pooling", "Pooling")]
    if encoder.normalize:
        kinds.append(("2_Normalize", "Normalize"))
        (out / "2_Normalize").mkdir()
    modules = [
        {"idx": i, "name": str(i), "path": path, "type": f"sentence_transformers.models.{kind}"}
        for i, (path, kind) in enumerate(kinds)
    ]
    (out / "modules.json").write_text(json.dumps(modules, indent=1))
    (out / "1_Pooling").mkdir()
    pooling = {"word_embedding_dimension": encoder.embedding_dim,
               "pooling_mode_mean_tokens": encoder.pooling == "mean",
               "pooling_mode_cls_token": encoder.pooling == "cls"}  # fmt: skip
    (out / "1_Pooling" / "config.json").write_text(json.dumps(pooling, indent=1))
    st = {"max_seq_length": encoder.max_length, "do_lower_case": False}
    (out / "sentence_bert_config.json").write_text(json.dumps(st, indent=1))


def reload(directory: Path, auto: str) -> nn.Module:
    """``Auto*.from_pretrained(directory, trust_remote_code=True)`` in float32, eval mode."""
    tr = transformers_module()
    autos = {
        "AutoModelForSequenceClassification": tr.AutoModelForSequenceClassification,
        "AutoModelForCausalLM": tr.AutoModelForCausalLM,
        "AutoModel": tr.AutoModel,
    }
    return autos[auto].from_pretrained(
        str(directory), trust_remote_code=True, local_files_only=True, dtype=torch.float32
    ).eval()


def _outputs(model: nn.Module, x: Tensor) -> Tensor:
    with torch.no_grad():
        out = model(x)
    return out.logits if hasattr(out, "logits") else out


def max_diff(plain: nn.Module, attr: str | None, reloaded: nn.Module, x: Tensor) -> float:
    """Largest |difference| of the outputs of ``plain`` and of it with ``reloaded`` inside,
    over the outputs' scale."""
    other = reloaded
    if attr is not None:
        other = copy.copy(plain)  # a shallow copy: the same wrapper around the reloaded model
        other._modules = dict(plain._modules, **{attr: reloaded})
    a, b = _outputs(plain.eval(), x), _outputs(other.eval(), x)
    return float((a - b).abs().max() / a.abs().max().clamp(min=1.0))


def save_hf(model: nn.Module, out: Path | str, examples: Tensor) -> Exported:
    """Write ``model`` to directory ``out`` (must not exist), reload it and check its outputs on
    ``examples`` (see the module docstring)."""
    out = Path(out)
    plain = folded_copy(model).eval()
    attr, inner, tok, auto = transformers_part(plain)
    dense = _dense_bytes(inner)  # before the config describes the pruned sizes
    kind = describe_sizes(inner, auto)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        inner.save_pretrained(str(tmp))
        if kind == "remote code":
            (tmp / REMOTE_FILE).write_text(remote_code(type(inner).__name__))
        if tok is not None:
            tok.save_pretrained(str(tmp))
        if isinstance(plain, TextEncoder):
            _write_st_files(plain, tmp)
        diff = max_diff(plain, attr, reload(tmp, auto), examples)
        if not diff <= ATOL:
            raise PrunelabError(f"the exported directory differs from the pruned model: {diff:.2g}")
        normal_permissions(tmp)
        tmp.replace(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    size = sum(f.stat().st_size for f in out.rglob("*.safetensors"))
    how = "from_pretrained(dir" + ("" if kind == "standard" else ", trust_remote_code=True") + ")"
    extra = "" if tok is not None else "; no tokenizer (the factory gave none): add yours"
    return Exported(out, size, dense, f"{how}; max |diff| {diff:.1e}{extra}")


def normal_permissions(root: Path) -> None:
    """What a new directory and file get under the umask (0755, 0644 by default): mkdtemp and
    safetensors create 0700 and 0600."""
    mask = current_umask()
    for p in [root, *root.rglob("*")]:
        p.chmod((0o777 if p.is_dir() else 0o666) & ~mask)


def _dense_bytes(inner: nn.Module) -> int:
    """Bytes of the parameters of the unpruned architecture (built on the meta device)."""
    cfg = copy.deepcopy(inner.config)
    for key in ("prunelab_blocks", "auto_map"):
        if hasattr(cfg, key):
            delattr(cfg, key)
    with torch.device("meta"):
        dense = type(inner)(cfg)
    return sum(p.numel() * p.element_size() for p in dense.parameters())


@FORMATS.register("hf")
def _hf(job: ExportJob, out: Path) -> Exported:
    """A transformers directory (``from_pretrained``; remote code when heads were removed)."""
    if out.exists():
        raise PrunelabError(f"{out} exists; choose another --out (nothing is overwritten)")
    return save_hf(job.model, out, job.examples)
