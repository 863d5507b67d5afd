"""The real default model (slow): SmolLM2-135M built from its config scores examples as recorded.

The golden scores were recorded from this repository's own pipeline (GGUF Q4_1 dequantized to
float32 by transformers, CPU); a change in prompt rendering, tokenization, padding, position ids
or scoring moves them by far more than the tolerance.
"""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from curvzo.run import CONFIG_DIR
from curvzo.scoring import candidate_scores, encode_examples, predictions
from curvzo.utils.instantiate import instantiate

ROWS = {
    "sst2": [
        {"sentence": "a gorgeous , witty , seductive movie .", "label": 1},
        {"sentence": "the worst film of the year , a total waste of time .", "label": 0},
        {"sentence": "it 's a charming and often affecting journey .", "label": 1},
    ],
    "cb": [{"premise": "The cat sat on the mat all day.", "hypothesis": "The cat was on the mat.", "label": 0}],
}
GOLDEN = [  # mean option log-probabilities; -inf pads the two-option rows
    [-8.392296, -5.517355, float("-inf")],
    [-7.148823, -7.093550, float("-inf")],
    [-10.437597, -7.641982, float("-inf")],
    [-3.715457, -5.232795, -7.925288],
]


@pytest.fixture(scope="module")
def default_model_and_tasks():
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfgs = {name: compose("config", overrides=[f"task={name}"]) for name in ROWS}
    GlobalHydra.instance().clear()
    assert cfgs["sst2"].model.name_or_path == "HuggingFaceTB/SmolLM2-135M-Instruct"  # the default model
    loaded = instantiate(cfgs["sst2"].model, "model")
    tasks = {name: instantiate(cfg.task, "task") for name, cfg in cfgs.items()}
    return loaded, tasks


@pytest.mark.slow
@pytest.mark.parametrize("share_prompt", [True, False])
def test_smollm2_scores_examples_as_recorded(default_model_and_tasks, share_prompt):
    loaded, tasks = default_model_and_tasks
    examples = [tasks[name].render(row) for name, rows in ROWS.items() for row in rows]
    assert examples[0].prompt == "a gorgeous , witty , seductive movie . It was"
    batch = encode_examples(examples, loaded.tokenizer, max_length=2048, share_prompt=share_prompt)
    # single-token options share one sequence per example; otherwise one per option
    assert batch.input_ids.shape[0] == (4 if share_prompt else 9)
    with torch.inference_mode():
        scores = candidate_scores(loaded.model, batch)
    torch.testing.assert_close(scores, torch.tensor(GOLDEN), rtol=0, atol=2e-3)
    assert predictions(scores).tolist() == [1, 1, 1, 0]
