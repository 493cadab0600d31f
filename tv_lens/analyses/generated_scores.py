"""Scoring by generation: a prompt is correct when the model's greedy continuation matches its answer's text.

Task-vector prompting (and the function-vector sweep built on it) scores with ``scoring="exact_match"`` or
``"first_word"`` this way, as Hendel et al. and Todd et al. evaluate: the model generates greedily from the
prompt (:func:`tv_lens.generation.generate`, with the interventions given) and its text, cut at the first
newline, is compared with the answer's text, whole or its first word.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from jaxtyping import Float, Int
from torch import Tensor

from tv_lens.analyses.answers import answer_counts
from tv_lens.errors import AnalysisError
from tv_lens.generation import exact_match, first_word_match, generate
from tv_lens.generation.matching import decoded_answers
from tv_lens.tasks.encoding import decoding_tokenizer

__all__ = ["GeneratedScores", "scoring_tokenizer"]


def scoring_tokenizer(model: Any, scoring: str, tokenizer: Any = None) -> Any:
    """The tokenizer a generation scoring decodes with: ``tokenizer``, else ``model.tokenizer``.

    Raises:
        AnalysisError: Neither is there.
        TaskError: ``tokenizer`` has no ``decode`` (e.g. a model's name).
    """
    found = decoding_tokenizer(tokenizer, model)
    if found is None:
        raise AnalysisError(
            f"scoring={scoring!r} compares generated text with the answers, which needs a tokenizer; pass "
            "tokenizer= (or use a model with .tokenizer), or scoring='teacher_forced'."
        )
    return found


class GeneratedScores:
    """Correctness of greedy generations against the answers' text (the generation scorings).

    Args:
        model: The model that generates.
        answers: Answer tokens ``[batch, n_answer]`` (``-1`` padded), decoded to the texts generations must match.
        scoring: ``"exact_match"`` (the whole text) or ``"first_word"``.
        tokenizer: Decodes tokens (``None``: ``model.tokenizer``).
        batch_size: Prompts per generation pass.

    Raises:
        AnalysisError: No tokenizer given and the model has none.
    """

    def __init__(
        self, model: Any, answers: Int[Tensor, "batch n_answer"], scoring: str, tokenizer: Any, batch_size: int
    ) -> None:
        self.model, self.scoring, self.batch_size = model, scoring, batch_size
        self.tokenizer = scoring_tokenizer(model, scoring, tokenizer)
        lengths = answer_counts(answers)
        self.answers = decoded_answers(answers, self.tokenizer)
        self.max_new_tokens = int(lengths.max()) + 1

    def score(
        self,
        inputs: Int[Tensor, "batch pos"],
        answer_pos: Int[Tensor, " batch"],
        attention_mask: Int[Tensor, "batch pos"] | None,
        interventions: Sequence[Any],
    ) -> Float[Tensor, " batch"]:
        """1.0 / 0.0 per prompt: its greedy generation (with ``interventions``) matches its answer."""
        generation = generate(
            self.model,
            inputs,
            list(interventions),
            self.max_new_tokens,
            answer_pos=answer_pos,
            attention_mask=attention_mask,
            stop_tokens=None,
            tokenizer=self.tokenizer,
            batch_size=self.batch_size,
        )
        match = exact_match if self.scoring == "exact_match" else first_word_match
        return match(generation, self.answers).double()
