"""The terminal stays readable: one line per distinct warning, none that do not apply."""

from __future__ import annotations

import io
import logging
import warnings

import pytest
import torch

from prunelab.cli import messages
from prunelab.measure import inference


def test_each_distinct_warning_once_on_one_line():
    stream = io.StringIO()
    with warnings.catch_warnings():  # restores showwarning and the filters afterwards
        warnings.simplefilter("always")
        handler = messages.configure(stream)
        try:
            for _ in range(3):
                warnings.warn("the same notice\n  over two lines", FutureWarning, stacklevel=1)
                logging.getLogger("prunelab.x").warning("a repeated log line %d", 7)
            warnings.warn("another notice", UserWarning, stacklevel=1)
        finally:
            logging.getLogger().removeHandler(handler)
    assert stream.getvalue().splitlines() == [
        "WARNING py.warnings: FutureWarning: the same notice over two lines",
        "WARNING prunelab.x: a repeated log line 7",
        "WARNING py.warnings: UserWarning: another notice",
    ]


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_a_transformers_classifier_is_evaluated_eagerly_and_quietly():
    """TorchScript never compiles transformers modules; trying printed two notices that do not
    apply to a BERT classifier (``ForCausalLMLoss``, a deprecated property) and a warning."""
    pytest.importorskip("transformers")
    from prunelab.sources.models.encoder import tiny_bert
    from prunelab.sources.models.text import TextClassifier

    model = TextClassifier(tiny_bert(seed=0), 2).eval()
    x = torch.randint(1, 1000, (8, 12), generator=torch.Generator().manual_seed(0))
    got = _Records()
    loggers = [logging.getLogger(), logging.getLogger("transformers")]  # the latter: its own
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.addHandler(got)
            lg.setLevel(logging.INFO)
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            assert inference.runner(model, x) is model  # eager, by design
    finally:
        for lg, level in zip(loggers, levels):
            lg.removeHandler(got)
            lg.setLevel(level)
    assert seen == []
    loud = [r.getMessage() for r in got.records if r.levelno >= logging.WARNING]
    assert loud == []  # neither ForCausalLMLoss nor "evaluating ... eagerly"
    (why,) = inference.compile_failures(model).values()  # still recorded with the run
    assert "transformers module" in why
