"""Fetch the text evaluation data offline-ready: files shipped inside PyPI packages.

- Sentiment: the 10,605 human-rated movie-review snippets of Hutto & Gilbert (ICWSM 2014), in
  the source archive of ``vaderSentiment==3.3.2`` (``additional_resources/hutto_ICWSM_2014.tar.gz``
  → ``movieReviewSnippets_GroundTruth.txt``: ``id<TAB>mean rating (-4..4)<TAB>sentence``).
- Similarity: Lee et al. (2005) from gensim's test data: ``lee.cor`` (50 news documents, one per
  line), ``similarities0-1.txt`` (50×50 upper-triangular matrix of mean human similarity) and
  ``lee_background.cor`` (300 more documents, used as unlabeled text).
- Encyclopedic prose: gensim's shortened English Wikipedia dump (206 pages, 103 articles,
  ``WIKI_FILE``, kept as the bz2 XML; :func:`prunelab.sources.data.textdata.load_wikipedia`
  strips the markup: ~2.5 MB of paragraphs).

Only ``pip download`` is used (no install); the extracted files are cached in ``<cache>/text/``.
"""

from __future__ import annotations

import io
import logging
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

from prunelab.errors import PrunelabError

log = logging.getLogger(__name__)

VADER_SPEC = "vaderSentiment==3.3.2"
GENSIM_SPEC = "gensim==4.3.3"  # has cp311 manylinux wheels; only its test data is read
VADER_INNER = "additional_resources/hutto_ICWSM_2014.tar.gz"
MOVIE_FILE = "hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt"
WIKI_FILE = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
GENSIM_FILES = ("lee.cor", "similarities0-1.txt", "lee_background.cor", WIKI_FILE)
TEXT_FILES = ("movieReviewSnippets_GroundTruth.txt",) + GENSIM_FILES


def text_dir(cache_dir: str | Path) -> Path:
    """Where the extracted text files live: ``<cache>/text``."""
    return Path(cache_dir) / "text"


def missing_files(cache_dir: str | Path) -> list[str]:
    """Names of the text files not yet in the cache (empty when fully fetched)."""
    d = text_dir(cache_dir)
    return [f for f in TEXT_FILES if not (d / f).is_file()]


def _pip_download(args: list[str], dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(dest), *args]
    log.info("running %s", " ".join(cmd))
    res = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if res.returncode != 0:
        tail = (res.stderr or res.stdout).strip().splitlines()[-1:] or ["no output"]
        raise PrunelabError(f"pip download {args[-1]} failed: {tail[0]}")
    files = sorted(dest.iterdir())
    if not files:
        raise PrunelabError(f"pip download {args[-1]} produced no file")
    return files[-1]


def extract_vader(sdist: Path, out_dir: Path) -> Path:
    """Read the movie-review ground truth out of the vaderSentiment sdist (tar.gz in tar.gz)."""
    with tarfile.open(sdist) as outer:
        inner_name = next((n for n in outer.getnames() if n.endswith(VADER_INNER)), None)
        if inner_name is None:
            raise PrunelabError(f"{sdist.name} has no {VADER_INNER}")
        inner_bytes = outer.extractfile(inner_name).read()  # type: ignore[union-attr]
    with tarfile.open(fileobj=io.BytesIO(inner_bytes)) as inner:
        data = inner.extractfile(MOVIE_FILE).read()  # type: ignore[union-attr]
    target = out_dir / Path(MOVIE_FILE).name
    target.write_bytes(data)
    return target


def extract_gensim(wheel: Path, out_dir: Path) -> list[Path]:
    """Read the Lee corpus, the human similarity matrix and the Wikipedia sample out of the
    gensim wheel."""
    out = []
    with zipfile.ZipFile(wheel) as z:
        for name in GENSIM_FILES:
            target = out_dir / name
            target.write_bytes(z.read(f"gensim/test/test_data/{name}"))
            out.append(target)
    return out


def fetch_text_data(cache_dir: str | Path) -> Path:
    """Download (pip, no install) and extract the text data into ``<cache>/text``; idempotent.

    Returns the text directory. Needs network access to PyPI only when files are missing.
    """
    out = text_dir(cache_dir)
    if not missing_files(cache_dir):
        return out
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        vdir, gdir = Path(tmp, "vader"), Path(tmp, "gensim")
        vdir.mkdir()
        gdir.mkdir()
        sdist = _pip_download(["--no-binary", ":all:", VADER_SPEC], vdir)
        extract_vader(sdist, out)
        wheel_args = [
            "--only-binary",
            ":all:",
            "--python-version",
            "3.11",
            "--platform",
            "manylinux2014_x86_64",
            GENSIM_SPEC,
        ]
        extract_gensim(_pip_download(wheel_args, gdir), out)
    log.info("text data cached in %s", out)
    return out
