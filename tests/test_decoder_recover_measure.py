"""Beyond perplexity for decoders: cloze scoring, generation speed, logit distillation."""

from __future__ import annotations

import copy
import os
import subprocess
import sys

import pytest
import torch

from prunelab import PrunelabError
from prunelab.measure.cloze import (
    ClozeItem,
    choice_logprobs,
    cloze_items,
    divergent_levels,
    final_words,
    score_cloze,
)
from prunelab.measure.generation import compare_generation, paired_speedup
from prunelab.measure.language import dense_reference, evaluate_lm
from prunelab.prune.surgery.decoder_plan import prune_decoder
from prunelab.recover.distill import Distilled, ReplayedTeacher
from prunelab.recover.finetune import train
from prunelab.tasks import CausalLMTask
from prunelab.training import TrainConfig, full_precision

transformers = pytest.importorskip("transformers")


def tiny_decoder(seed: int = 0) -> torch.nn.Module:
    cfg = transformers.LlamaConfig(
        vocab_size=96,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(cfg).eval()


class CharTokenizer:
    """One token per character (ids 1..95), enough to exercise the cloze builder."""

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict:
        return {"input_ids": [min(95, max(1, ord(c) - 31)) for c in text]}


DOCS = [
    "The river flooded the town. Police closed every road! Rain fell again today.",
    "Ministers met in Canberra. The budget was delayed. Farmers asked for water?",
]


def test_final_words_and_items():
    pairs = final_words(DOCS)
    assert [w for _, w in pairs] == ["town", "road", "today", "Canberra", "delayed", "water"]
    assert pairs[1][0] == "The river flooded the town. Police closed every"
    items = cloze_items(CharTokenizer(), DOCS, n_items=4, choices=3, context_tokens=10)
    assert len(items) == 4
    for it in items:
        assert len(it.context) == 10 and len(it.choices) == 3 and 0 <= it.answer < 3
        assert len(set(it.choices)) == 3  # distractors differ from the answer
    again = cloze_items(CharTokenizer(), DOCS, n_items=4, choices=3, context_tokens=10)
    assert items == again  # seeded


ITEMS_SCRIPT = """
from prunelab.measure.cloze import cloze_items
class CharTokenizer:
    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [min(95, max(1, ord(c) - 31)) for c in text]}
docs = [f"Word {w} ends here in {w}. The town saw {w.lower()}. Then came {w.upper()}." for w in
        ("Rain", "Fire", "Snow", "Wind", "Hail", "Heat", "Cold", "Dust")]
print(cloze_items(CharTokenizer(), docs, n_items=12, choices=4, context_tokens=8))
"""


def test_cloze_items_do_not_depend_on_the_hash_seed():
    """Final words that differ only in case ("Rain", "rain", "RAIN") get one order, whatever
    the process's string hashing: the same items in every run (a set's order leaked into the
    distractors once)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(["src", os.environ.get("PYTHONPATH", "")])}
    outs = {
        subprocess.run([sys.executable, "-c", ITEMS_SCRIPT], env={**env, "PYTHONHASHSEED": seed},
                       capture_output=True, text=True, check=True).stdout
        for seed in ("1", "2", "3")
    }  # fmt: skip
    assert len(outs) == 1 and "ClozeItem" in next(iter(outs))


def test_choice_logprobs_match_a_direct_forward():
    """Padding and batching do not change a choice's summed log-probability."""
    model = tiny_decoder()
    items = [ClozeItem((5, 6, 7, 8), ((9,), (10, 11, 12)), 1), ClozeItem((3,), ((4, 4), (7,)), 0)]
    lp = choice_logprobs(model, items, batch_size=2)
    with torch.no_grad():
        ids = torch.tensor([[5, 6, 7, 8, 10, 11, 12]])
        full = torch.log_softmax(model(input_ids=ids).logits.double(), -1)[0]
    direct = full[3, 10] + full[4, 11] + full[5, 12]
    assert float(lp[0, 1]) == pytest.approx(float(direct), abs=1e-6)


class Favours(torch.nn.Module):
    """A 'language model' whose next token is always ``token`` (logit 10, the rest 0)."""

    def __init__(self, token: int, vocab: int = 16) -> None:
        super().__init__()
        self.token, self.vocab = token, vocab

    def forward(self, input_ids: torch.Tensor, use_cache: bool = False) -> torch.Tensor:
        logits = torch.zeros(*input_ids.shape, self.vocab)  # (B, T, V)
        logits[..., self.token] = 10.0
        return logits


def test_shared_context_cache_matches_whole_sequences():
    model = tiny_decoder()
    g = torch.Generator().manual_seed(5)
    items = [
        ClozeItem(
            tuple(torch.randint(1, 96, (6,), generator=g).tolist()),
            ((3,), (4, 5, 6), (7, 8), (9,)),
            i % 4,
        )
        for i in range(5)
    ]
    shared = choice_logprobs(model, items, batch_size=4)  # same context length: cached path
    mixed = [ClozeItem(items[0].context[1:], items[0].choices, 0)] + items[1:]
    separate = choice_logprobs(model, mixed, batch_size=16)  # unequal contexts: whole path
    assert torch.allclose(shared[1:], separate[1:], atol=1e-5)


def test_score_cloze_follows_the_likelihood():
    items = [ClozeItem((1, 2), ((3,), (7,), (9,)), 1), ClozeItem((4,), ((7, 7), (5,), (6,)), 0)]
    s = score_cloze(Favours(7), items)
    assert s.items == 2 and s.accuracy == 1.0
    assert s.answer_nll == pytest.approx(
        -torch.log_softmax(torch.tensor([10.0] + [0.0] * 15), 0)[0].item() * 1.5, rel=1e-4
    )
    assert score_cloze(Favours(5), items).accuracy == 0.0


def test_divergent_levels_needs_more_than_noise():
    dense = {"level": 0.0, "perplexity": 10.0, "cloze_accuracy": 0.5, "cloze_items": 100}
    rows = [
        {"level": 0.1, "perplexity": 10.5, "cloze_accuracy": 0.45, "cloze_items": 100},  # noise
        {"level": 0.2, "perplexity": 11.0, "cloze_accuracy": 0.30, "cloze_items": 100},
        {"level": 0.3, "perplexity": 30.0, "cloze_accuracy": 0.25, "cloze_items": 100},
    ]
    assert divergent_levels(rows, dense) == [0.2]
    assert divergent_levels(rows, dense, ppl_tolerance=5.0) == [0.2, 0.3]


def test_generation_speed_pairs_rounds():
    dense = tiny_decoder()
    slim = copy.deepcopy(dense)
    prune_decoder(slim, [torch.randint(0, 96, (2, 16))], "blocks", 0.5)
    res = compare_generation(
        {"dense": dense, "slim": slim},
        vocab_size=96,
        prompt_tokens=8,
        new_tokens=4,
        prefill_tokens=16,
        rounds=3,
        threads=1,
    )
    assert len(res["dense"].tokens_per_s) == 3 and res["slim"].threads == 1
    ratio = paired_speedup(res["dense"], res["slim"])
    assert set(ratio) == {"decode", "prefill"} and all(v > 0 for v in ratio.values())
    with pytest.raises(PrunelabError):
        compare_generation({"d": dense}, 96, rounds=0)


def test_distillation_pulls_the_pruned_model_back_towards_dense():
    """The one distillation (recover.distill.Distilled with the causal-LM task's top-k KL)
    recovers a structurally pruned decoder towards the dense one, without labels."""
    dense = tiny_decoder()
    windows = torch.randint(0, 96, (8, 24), generator=torch.Generator().manual_seed(3))
    ref = dense_reference(dense, windows, k=96)  # k = vocabulary: the exact KL
    student = copy.deepcopy(dense)
    prune_decoder(student, [windows], "heads+ffn", 0.5)
    before = evaluate_lm(student, windows, ref).kl
    task = CausalLMTask(top_k=96)
    with torch.no_grad():  # the training loss is the KL the evaluation reports
        out, teach = task.forward(student, windows), task.forward(dense, windows)
        assert float(task.soft_loss(out, teach, 1.0)) == pytest.approx(before, rel=1e-4)
    cfg = TrainConfig(epochs=15, lr=3e-3, batch_size=4)
    obj = Distilled(task, dense.eval(), weight=1.0, temperature=1.0)
    train(student, windows, cfg, torch.Generator().manual_seed(0), task=obj)
    assert evaluate_lm(student, windows, ref).kl < 0.7 * before


def test_replayed_teacher_trains_the_same_student_with_one_teacher_pass_per_window():
    """Distilling from ReplayedTeacher (top-k log-probs kept once per window) gives the same
    student, step for step, as distilling from the dense model itself, at top_k < vocabulary
    (the rest bin is replayed too), and runs the dense model once per distinct window."""
    dense = tiny_decoder()
    windows = torch.randint(0, 96, (6, 24), generator=torch.Generator().manual_seed(4))
    task, cfg = CausalLMTask(top_k=16), TrainConfig(epochs=3, lr=3e-3, batch_size=2)
    start = copy.deepcopy(dense)
    prune_decoder(start, [windows], "heads+ffn", 0.5)
    students, replayed = [], ReplayedTeacher(dense.eval(), k=16)
    for teacher in (dense.eval(), replayed):
        student = copy.deepcopy(start)
        obj = Distilled(task, teacher, weight=1.0, temperature=1.0)
        train(student, windows, cfg, torch.Generator().manual_seed(0), task=obj)
        students.append(dict(student.named_parameters()))
    a, b, s0 = *students, dict(start.named_parameters())
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-4
    assert max(float((a[k] - s0[k]).abs().max()) for k in a) > 1e-2  # it did train
    assert replayed.computed == len(windows)  # 3 epochs, one teacher pass per window


class Recorded(torch.nn.Module):
    """``model``, noting the dtype of every output it gives."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model, self.dtypes = model, []

    def forward(self, input_ids: torch.Tensor, **kw):
        out = self.model(input_ids=input_ids, **kw)
        self.dtypes.append(out.logits.dtype)
        return out


def test_bf16_distillation_runs_the_student_in_bf16_and_the_teacher_in_float32():
    """``precision = "bf16"``: the student's forward runs under bfloat16 autocast, the teacher
    stays the float32 reference, the weights stay float32, and the KL still falls."""
    dense = tiny_decoder()
    windows = torch.randint(0, 96, (8, 24), generator=torch.Generator().manual_seed(3))
    ref = dense_reference(dense, windows, k=96)
    student = copy.deepcopy(dense)
    prune_decoder(student, [windows], "heads+ffn", 0.5)
    before = evaluate_lm(student, windows, ref).kl
    seen = []
    hook = student.model.layers[0].mlp.down_proj.register_forward_hook(
        lambda _m, _i, o: seen.append(o.dtype)
    )
    teacher = Recorded(dense.eval())
    cfg = TrainConfig(epochs=15, lr=3e-3, batch_size=4, precision="bf16")
    obj = Distilled(CausalLMTask(top_k=96), teacher, weight=1.0, temperature=1.0)
    train(student, windows, cfg, torch.Generator().manual_seed(0), task=obj)
    hook.remove()
    assert set(seen) == {torch.bfloat16}
    assert set(teacher.dtypes) == {torch.float32}
    assert all(p.dtype == torch.float32 for p in student.parameters())
    assert evaluate_lm(student, windows, ref).kl < 0.7 * before


def test_replayed_teacher_in_bf16_runs_the_dense_model_in_bfloat16_and_keeps_float32_targets():
    """``ReplayedTeacher(precision="bf16")``: the dense model's forward runs under bfloat16
    autocast even inside the float32 teacher context of ``distill_loss``; the replayed
    log-probabilities are float32 and close to (not equal to) the float32 teacher's."""
    dense = tiny_decoder()
    x = torch.randint(0, 96, (2, 24), generator=torch.Generator().manual_seed(5))
    seen = []
    hook = dense.model.layers[0].mlp.down_proj.register_forward_hook(
        lambda _m, _i, o: seen.append(o.dtype)
    )
    exact = ReplayedTeacher(dense.eval(), k=16)(input_ids=x)
    with full_precision():
        half = ReplayedTeacher(dense.eval(), k=16, precision="bf16")(input_ids=x)
    hook.remove()
    assert seen == [torch.float32, torch.bfloat16]
    assert exact.dtype == half.dtype == torch.float32
    gap = float((exact.log_softmax(-1) - half.log_softmax(-1)).abs().max())
    assert 0 < gap < 0.2
    with pytest.raises(PrunelabError, match="precision"):
        ReplayedTeacher(dense, precision="fp16")
