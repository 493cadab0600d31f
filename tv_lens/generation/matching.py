"""Scoring generated continuations against answers: by tokens, by exact text, by first word."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from tv_lens.errors import ShapeError
from tv_lens.generation.continuation import Generation
from tv_lens.metrics import checked_answers
from tv_lens.tasks.batch import ICLBatch
from tv_lens.tasks.encoding import decode_ids

__all__ = ["answer_texts", "decoded_answers", "exact_match", "first_word_match", "token_match"]


def answer_texts(batch: ICLBatch, tokenizer: Any) -> list[str]:
    """Each prompt's answer as text: its answer tokens (``-1`` padding dropped) decoded with ``tokenizer``.

    For a text pool's batch this is the query's output, with the whitespace the template puts before it where the
    tokenizer joins that whitespace to the output's first characters.
    """
    if not isinstance(batch, ICLBatch):
        raise ShapeError(f"answer_texts needs an ICLBatch, got {type(batch).__name__}.")
    if getattr(tokenizer, "decode", None) is None:
        raise ShapeError(
            f"answer_texts needs a tokenizer with decode() (e.g. model.tokenizer), got {type(tokenizer).__name__}."
        )
    return decoded_answers(batch.answers, tokenizer)


def decoded_answers(answers: Int[Tensor, "batch n_answer"], tokenizer: Any) -> list[str]:
    """Answer tokens (``-1`` padding dropped) as text, decoded as generated texts are (:func:`decode_ids`)."""
    return [decode_ids(tokenizer, row[row >= 0].tolist()) for row in answers.cpu()]


def token_match(generation: Generation, answers: Int[Tensor, "batch n_answer"]) -> Float[Tensor, " batch"]:
    """1.0 where the first generated tokens equal every answer token (``-1`` pads shorter answers), else 0.0.

    Tokens generated after the answer are ignored, so a model that goes on with the next demonstration still
    counts as correct.
    """
    answers = checked_answers(answers, len(generation)).cpu()
    width = answers.shape[1]
    generated = torch.full((len(generation), width), -1, dtype=torch.long)
    n = min(width, generation.tokens.shape[1])
    generated[:, :n] = generation.tokens[:, :n]
    real = answers >= 0
    return ((generated == answers) | ~real).all(dim=1).float()


def exact_match(
    generated: Generation | Sequence[str], answers: Sequence[str | Sequence[str]], *, until: str | None = "\n"
) -> Float[Tensor, " batch"]:
    """1.0 where the generated text, cut at ``until`` and stripped of whitespace, equals a stripped answer.

    Args:
        generated: A :class:`Generation` with texts, or one string per prompt.
        answers: One answer string per prompt, or a list of accepted strings per prompt.
        until: Cut the generated text at its first occurrence (the prompt's separator, after which the model
            goes on with a new demonstration); ``None`` keeps all of it.
    """
    texts, options = _texts_and_answers(generated, answers, until)
    return torch.tensor(
        [float(text.strip() in {a.strip() for a in opts}) for text, opts in zip(texts, options, strict=True)]
    )


def first_word_match(
    generated: Generation | Sequence[str], answers: Sequence[str | Sequence[str]], *, until: str | None = "\n"
) -> Float[Tensor, " batch"]:
    """1.0 where the first word of the generated text (cut at ``until``) equals an answer's first word.

    Words are split on whitespace; an empty generation matches nothing. Arguments as for :func:`exact_match`.
    """
    texts, options = _texts_and_answers(generated, answers, until)
    scores = []
    for text, opts in zip(texts, options, strict=True):
        words = text.split()
        firsts = {a.split()[0] for a in opts if a.split()}
        scores.append(float(bool(words) and words[0] in firsts))
    return torch.tensor(scores)


def _texts_and_answers(
    generated: Generation | Sequence[str], answers: Sequence[str | Sequence[str]], until: str | None
) -> tuple[list[str], list[list[str]]]:
    if isinstance(generated, Generation):
        if generated.texts is None:
            raise ShapeError(
                "This generation has no texts (no tokenizer): pass tokenizer= to generate(), or score tokens with "
                "token_match()."
            )
        texts = list(generated.texts)
    elif isinstance(generated, str) or not all(isinstance(t, str) for t in generated):
        raise ShapeError("generated must be a Generation or a list of strings, one per prompt.")
    else:
        texts = list(generated)
    if isinstance(answers, str) or len(answers) != len(texts):
        raise ShapeError(
            f"answers must hold one answer (a string or a list of accepted strings) per prompt: {len(texts)} "
            f"prompts, got {1 if isinstance(answers, str) else len(answers)} answers."
        )
    options = [[a] if isinstance(a, str) else list(a) for a in answers]
    if not all(isinstance(a, str) for opts in options for a in opts):
        raise ShapeError("answers must be strings (or lists of strings); decode token answers with answer_texts().")
    if until:
        texts = [text.split(until, 1)[0] for text in texts]
    return texts, options
