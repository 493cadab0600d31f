"""Saved result files as an earlier version of tv_lens wrote them, or as someone crafted them (digests recomputed)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

import tv_lens.results.storage as storage
from tv_lens.results import Result


def save_without_field(result: Result, field: str, path: Path) -> Path:
    """Write ``result`` to ``path`` as a version before ``field`` existed: no such field, a valid digest."""
    data = storage.result_to_bytes(result)
    document = _document(data)
    del document["result"]["fields"][field]
    return _written(path, document, load_tensors(data))


def with_tensors_edited(path: Path, edit: Callable[[dict[str, torch.Tensor]], Any]) -> Path:
    """The result file at ``path`` with ``edit(tensors)`` applied and both digests recomputed, as a crafted file."""
    data = path.read_bytes()
    tensors = load_tensors(data)
    edit(tensors)
    return _written(path, _document(data), tensors)


def _document(data: bytes) -> dict[str, Any]:
    header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
    return json.loads(header["__metadata__"][storage.METADATA_KEY])


def _written(path: Path, document: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Path:
    """Write ``tensors`` with ``document`` as their header, both digests recomputed."""
    document["tensors"] = storage.tensor_digest(tensors)
    document["digest"] = storage.document_digest(document)
    path.write_bytes(save_tensors(tensors, metadata={storage.METADATA_KEY: storage.canonical_json(document)}))
    return path
