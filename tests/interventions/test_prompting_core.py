"""Task-vector prompting's core: unknown modes and vector sources are refused, not read as another choice."""

import pytest
import torch

from tv_lens.errors import AnalysisError
from tv_lens.interventions.prompting import injection, vector_sources


def test_an_unknown_mode_is_refused_not_written_as_an_addition():
    vectors = torch.zeros(3, 8)
    assert injection(0, vectors, "replace").kind == "replace"
    assert injection(0, vectors, "add").kind == "add"
    with pytest.raises(AnalysisError, match=r"Unknown TVP mode 'Replace'; use one of \['replace', 'add'\]"):
        injection(0, vectors, "Replace")


def test_an_unknown_source_is_refused_not_read_as_another_prompt():
    task_ids = torch.tensor([0, 1, 0, 1])
    assert vector_sources(task_ids, ("a", "b"), "same_prompt").tolist() == [0, 1, 2, 3]
    assert vector_sources(task_ids, ("a", "b"), "other_prompt").tolist() == [2, 3, 0, 1]
    with pytest.raises(AnalysisError, match=r"Unknown vector source 'same'.*\['other_prompt', 'same_prompt'\]"):
        vector_sources(task_ids, ("a", "b"), "same")
