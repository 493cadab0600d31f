"""Saved result files as an earlier version of tv_lens wrote them."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

import tv_lens.results.storage as storage
from tv_lens.results import Result


def save_without_field(result: Result, field: str, path: Path) -> Path:
    """Write ``result`` to ``path`` as a version before ``field`` existed: no such field, a valid digest."""
    data = storage.result_to_bytes(result)
    tensors = load_tensors(data)
    header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
    document = json.loads(header["__metadata__"][storage.METADATA_KEY])
    del document["result"]["fields"][field]
    document["digest"] = storage.document_digest(document)
    path.write_bytes(save_tensors(tensors, metadata={storage.METADATA_KEY: storage.canonical_json(document)}))
    return path
