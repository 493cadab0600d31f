"""Small random models of real HuggingFace architectures, loaded through TransformerLens, as pytest fixtures.

Not a conftest.py: tests/conftest.py owns the module name ``conftest`` that test files import. Import the
fixtures into a test module to use them::

    from pretrained_helpers import one_thread, pretrained_fixture  # noqa: F401  (fixtures)

    def test_something(pretrained):
        pretrained.model, pretrained.tokenizer, pretrained.arch, pretrained.loader, pretrained.folder

Each architecture is built once per test session (under pytest's session temporary folder) and each
(architecture, loader) model is loaded once per process, whichever test modules import the fixtures.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import torch

from tv_lens.models import hooked_transformer_available
from tv_lens.models.local_hf import ARCHITECTURES, build_local_model, load_local_model

#: Sizes of every test model: 2 blocks, d_model 64, 4 query heads (2 key/value heads where the architecture
#: has grouped-query attention), 1024 tokens.
SIZES = {"n_layers": 2, "d_model": 64, "n_heads": 4}
GQA_ARCHITECTURES = tuple(arch for arch in ARCHITECTURES if arch not in ("gpt2", "gpt_neox", "gptj", "gpt_neo"))
#: Architectures TransformerLens 3.9's HookedTransformer cannot be built for from a local config.
HOOKED_UNSUPPORTED = ("gemma2", "gemma3_text", "olmo2", "qwen3_moe", "llama4_text", "smollm3")
#: Loaders: the bridge with raw HF numerics, the bridge in compatibility mode, HookedTransformer (TL ≤ 3).
LOADERS = ("bridge", "bridge-compat", *(("hooked",) if hooked_transformer_available() else ()))
HOOKED_ARCHITECTURES = tuple(a for a in ARCHITECTURES if a not in HOOKED_UNSUPPORTED) if "hooked" in LOADERS else ()
COMBINATIONS = [
    (arch, loader) for arch in ARCHITECTURES for loader in LOADERS if loader != "hooked" or arch in HOOKED_ARCHITECTURES
]


@dataclass(frozen=True)
class Pretrained:
    """One loaded test model.

    Attributes:
        model: The TransformerLens model (``TransformerBridge`` or ``HookedTransformer``), float32, eval mode.
        tokenizer: Its tokenizer as TransformerLens set it up (``model.tokenizer``).
        arch: HuggingFace architecture (``"gpt2"``, ``"gpt_neox"``, ``"llama"``, ``"qwen2"``, ``"gemma2"``).
        loader: ``"bridge"``, ``"bridge-compat"`` (compatibility mode) or ``"hooked"``.
        folder: The ``save_pretrained`` folder the model was loaded from.
    """

    model: Any
    tokenizer: Any
    arch: str
    loader: str
    folder: Path

    @property
    def gqa(self) -> bool:
        """Whether the model has fewer key/value heads than query heads."""
        return self.arch in GQA_ARCHITECTURES

    def __repr__(self) -> str:
        return f"Pretrained({self.arch}, {self.loader})"


def load(folder: Path, loader: str, **options: Any) -> Any:
    """``load_local_model`` with a fixture loader name (``"bridge-compat"`` = bridge in compatibility mode)."""
    compat = loader == "bridge-compat"
    return load_local_model(folder, "bridge" if compat else loader, compatibility_mode=compat, **options)


@cache
def _folder(root: Path, arch: str) -> Path:
    return build_local_model(arch, root / arch, **SIZES)


@cache
def _loaded(root: Path, arch: str, loader: str) -> Pretrained:
    folder = _folder(root, arch)
    model = load(folder, loader)
    return Pretrained(model, model.tokenizer, arch, loader, folder)


@pytest.fixture(autouse=True)
def one_thread():
    """Run on one thread: tiny models gain nothing from more, and on a busy machine several threads per process
    waiting on each other slow them down many times over."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.getbasetemp() / "pretrained-models"


@pytest.fixture(scope="session", params=ARCHITECTURES, name="pretrained_folder")
def pretrained_folder_fixture(request, tmp_path_factory) -> Path:
    """The ``save_pretrained`` folder of each architecture (built once per session)."""
    return _folder(_root(tmp_path_factory), request.param)


@pytest.fixture(
    scope="session", params=COMBINATIONS, ids=[f"{a}-{loader}" for a, loader in COMBINATIONS], name="pretrained"
)
def pretrained_fixture(request, tmp_path_factory) -> Pretrained:
    """Every (architecture × loader) the installed TransformerLens can load offline, as a :class:`Pretrained`."""
    arch, loader = request.param
    return _loaded(_root(tmp_path_factory), arch, loader)


def loaded(tmp_path_factory: pytest.TempPathFactory, arch: str, loader: str) -> Pretrained:
    """The cached :class:`Pretrained` of one combination (for tests that pair two loaders of one architecture)."""
    return _loaded(_root(tmp_path_factory), arch, loader)


def folder_of(tmp_path_factory: pytest.TempPathFactory, arch: str) -> Path:
    """The session's ``save_pretrained`` folder of ``arch`` (built on first use)."""
    return _folder(_root(tmp_path_factory), arch)


def decoder(hf: Any) -> Any:
    """The decoder stack of a HuggingFace causal LM: its ``base_model`` (Llama-4's, whose prefix names no attribute
    of the causal LM, is ``model``)."""
    return hf.base_model if hf.base_model is not hf else hf.model


PROMPTS = (
    "hot->cold\nbig->small\nup->",
    "France->Paris\nJapan->Tokyo\nItaly->Rome\nSpain->",
    "10110 01101->00100\n11100 00111->",
    "the dog walked slowly into the dark forest\nshe->",
    "yes->no\nday->night\nblack->white\nlove->hate\nopen->closed\nfast->",
    "dog->dogs\n",
)


def prompt_tokens(tokenizer: Any, texts: tuple[str, ...] = PROMPTS) -> list[list[int]]:
    """Each text's tokens, BOS first (the tokenizer adds no special token itself here)."""
    return [[tokenizer.bos_token_id, *tokenizer(text, add_special_tokens=False)["input_ids"]] for text in texts]


def padded(rows: list[list[int]], pad_id: int, side: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token rows padded to one width: ``(tokens [batch, pos], attention_mask [batch, pos], answer_pos [batch])``.

    ``side``: ``"right"``, ``"left"``, or ``"mixed"`` (even rows right-padded, odd rows left-padded).
    ``answer_pos`` is each row's last real token.
    """
    width = max(map(len, rows))
    tokens = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(tokens)
    answer_pos = torch.empty(len(rows), dtype=torch.long)
    for i, row in enumerate(rows):
        left = side == "left" or (side == "mixed" and i % 2 == 1)
        start = width - len(row) if left else 0
        tokens[i, start : start + len(row)] = torch.tensor(row)
        mask[i, start : start + len(row)] = 1
        answer_pos[i] = start + len(row) - 1
    return tokens, mask, answer_pos
