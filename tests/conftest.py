"""Shared fixtures: tiny models built from configs (no downloads), on the CPU."""

from __future__ import annotations

import pytest
import torch

from sirl.model import SIZE_PRESETS, build_model
from sirl.tasks.arith import ArithTask
from sirl.tokenizer import build_char_tokenizer


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def arith_tokenizer():
    return build_char_tokenizer(ArithTask().alphabet())


@pytest.fixture(scope="session")
def nano_llama(arith_tokenizer):
    return build_model(arith_tokenizer, "llama", SIZE_PRESETS["nano"], 256, seed=0).eval()
