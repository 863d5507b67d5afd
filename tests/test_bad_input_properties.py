"""Property-based: any malformed config value or data line ends in one clean error line, before any
model loads, and leaves no output behind (hypothesis)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf
from omegaconf.errors import ValidationError

from curvzo.config_schema import schema_problem
from curvzo.errors import CurvzoError
from tests.helpers import load_task
from tests.test_configs import compose_cfg

AT_LEAST_ONE = ["budget.max_steps", "budget.batch_size", "budget.eval_every", "budget.eval_batch_size",
                "logger.log_every", "max_nonfinite_streak", "checkpoint.every", "model.max_length",
                "budget.num_train", "budget.num_dev"]  # these two: a training run needs examples and a dev set
AT_LEAST_ZERO = ["seed", "data_seed", "direction_workers", "budget.num_test"]
CHOICES = {"select_by": ("dev_loss", "dev_metric"), "logger.wandb.mode": ("offline", "online", "disabled"),
           "schedule.name": ("constant", "linear")}

not_an_integer = st.one_of(st.floats(allow_nan=True).filter(lambda x: not float(x).is_integer()),
                           st.text(max_size=12), st.booleans(), st.lists(st.integers(), max_size=2))


def _bad_value(key_and_kind):
    key, kind = key_and_kind
    if kind == "positive":
        return st.tuples(st.just(key), st.one_of(st.integers(max_value=0), not_an_integer))
    if kind == "nonnegative":
        return st.tuples(st.just(key), st.one_of(st.integers(max_value=-1), not_an_integer))
    if kind == "choice":
        return st.tuples(st.just(key), st.text(max_size=12).filter(lambda v: v not in CHOICES[key]))
    if kind == "lr":
        return st.tuples(st.just(key), st.one_of(st.floats(max_value=0.0), st.just(math.inf), st.just(math.nan),
                                                 st.text(max_size=8), st.booleans()))
    return st.tuples(st.just(key), st.one_of(st.just(""), st.text(min_size=1, max_size=20).map(lambda t: "/nonexistent/" + t)))


KEYS = ([(k, "positive") for k in AT_LEAST_ONE] + [(k, "nonnegative") for k in AT_LEAST_ZERO]
        + [(k, "choice") for k in CHOICES] + [("optimizer.lr", "lr"), ("resume", "resume")])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(KEYS).flatmap(_bad_value))
def test_a_malformed_config_value_is_one_clean_line_and_writes_nothing(tmp_path_factory, key_value):
    from curvzo.job import run_job

    key, value = key_value
    cfg = compose_cfg(["model=tiny-opt", "task=sst2", "optimizer=mezo", "budget=smoke", "paths.data_dir=/nonexistent",
                       "logger.wandb.mode=disabled"])
    out = tmp_path_factory.mktemp("run") / "out"
    try:
        OmegaConf.update(cfg, key, value, force_add=True)
    except ValidationError as err:  # a wrong type for the schema: refused while composing, before any job code
        message = schema_problem(err)
    else:
        try:
            run_job(cfg, out)
        except CurvzoError as err:
            message = str(err)
        else:
            raise AssertionError(f"{key}={value!r} was accepted")
    assert message and "\n" not in message and "Traceback" not in message
    assert key.split(".")[-1] in message or "data directory" not in message
    assert not out.exists()  # rejected before the output directory was made


RTE_OK = {"premise": "Cats purr.", "hypothesis": "Cats make sounds.", "label": "entailment", "idx": 0}

malformed_tsv_line = st.one_of(
    st.text(alphabet=st.characters(blacklist_characters="\t\n\r"), min_size=1, max_size=30),  # one field
    st.tuples(st.text(max_size=10), st.text(max_size=10), st.text(max_size=10)).map("\t".join),  # three fields
)
malformed_json_line = st.one_of(
    st.text(min_size=1, max_size=30).filter(lambda t: t.strip() and not _is_json_object(t)),
    st.dictionaries(st.sampled_from(list(RTE_OK)), st.none() | st.text(max_size=5), max_size=3).map(json.dumps),
    st.text(alphabet="abcdefghij ", min_size=1, max_size=10).map(lambda t: json.dumps({**RTE_OK, "label": t})),
)


def _is_json_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(line=malformed_tsv_line)
def test_a_malformed_sst2_line_is_one_line_naming_file_and_line(tmp_path_factory, line):
    data_dir = _task_files(tmp_path_factory, "glue/SST-2", {
        "train.tsv": f"sentence\tlabel\nfine\t1\n{line}\nbad\t0\n", "dev.tsv": "sentence\tlabel\nfine\t1\n"})
    message = _data_error("sst2", data_dir)
    assert re.search(r"train\.tsv:\d+", message)  # a line separator in the text (e.g. \x1c) moves the number


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(line=malformed_json_line)
def test_a_malformed_rte_line_is_one_line_naming_file_and_line(tmp_path_factory, line):
    data_dir = _task_files(tmp_path_factory, "super_glue/RTE", {
        "train.jsonl": json.dumps(RTE_OK) + "\n" + line.replace("\n", " ") + "\n", "val.jsonl": json.dumps(RTE_OK) + "\n"})
    message = _data_error("rte", data_dir)
    assert re.search(r"train\.jsonl:\d+", message)  # a line separator in the text moves the number


def _task_files(tmp_path_factory, folder: str, files: dict[str, str]) -> Path:
    """A fresh data directory holding ``folder/<name>`` for each file."""
    data_dir = tmp_path_factory.mktemp("data")
    (data_dir / folder).mkdir(parents=True)
    for name, text in files.items():
        (data_dir / folder / name).write_text(text, encoding="utf-8")
    return data_dir


def _data_error(task: str, data_dir: Path) -> str:
    try:
        load_task(task).load_pools(str(data_dir))
    except CurvzoError as err:
        message = str(err)
    else:
        raise AssertionError("the malformed line was accepted")
    assert message and "\n" not in message
    return message
