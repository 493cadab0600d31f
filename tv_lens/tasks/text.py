"""Text ICL tasks through a model's tokenizer, for pretrained language models.

A :class:`TextTask` is a named list of ``(input, output)`` strings. A :class:`TextPool` renders prompts with a
template (default Hendel et al.'s ``"{x}->{y}"`` lines joined by newlines, the query ``"{x}->"``), tokenizes
each whole prompt with the model's tokenizer and returns the same :class:`~tv_lens.tasks.batch.ICLBatch` as the
token pools: ``answer_pos`` is the last token of the query prompt, ``answers`` the tokens of the query's
output (several for a multi-token output; ``-1`` pads shorter ones).

**Tokenization.** Each prompt is tokenized as one string, so the model sees its natural tokens; character
offsets locate every demonstration, answer and the query. Whitespace ending the query prompt (template
``"{x} -> {y}"``) is moved to the start of the answer, as language-model evaluation harnesses do, because BPE
tokenizers attach a space to the word after it. Where the tokenizer gives that whitespace a token of its own
(SentencePiece's ``▁``, and Llama-3's or Qwen's ``" "``, before digits), the token stays with the prompt: the answer
starts at its first token holding a character of the output, so the prompt's last token is the one that predicts
it, in the query as in every demonstration (:func:`~tv_lens.tasks.text_batch.first_answer_token`).

**Representable examples.** An example is kept only if the tokenizer can represent it: no unknown token, an
answer that starts a new token (no token spans the query/answer boundary) and has at least one, and a query
prompt that tokenizes the same with and without its answer. ``filter_examples=True`` drops the others
(``pool.dropped`` lists them with the reason); ``False`` raises a :class:`~tv_lens.errors.TaskError` naming
the first.

**Null task and label noise.** Null prompts pair inputs of the pool's tasks with outputs drawn independently
(a random example of a random task): outputs from the pool's output distribution that say nothing about
their inputs. Label noise replaces a demonstration's output by such a random output that differs from it.
Families: :mod:`tv_lens.tasks.text_families` (bitwise strings, first word with a POS tag) and
:mod:`tv_lens.tasks.datasets` (public JSON task files). A :class:`TextTask` and the checks of its examples live in
:mod:`tv_lens.tasks.text_task`, the padding of tokenized prompts into a batch in :mod:`tv_lens.tasks.text_batch`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from jaxtyping import Int
from torch import Tensor

from tv_lens.errors import TaskError
from tv_lens.tasks.batch import ICLBatch
from tv_lens.tasks.encoding import Encoded, TextEncoder
from tv_lens.tasks.pool_checks import NULL_TASK, PoolTasks, check_flag
from tv_lens.tasks.sampling import ShotSpec, _shot_choices, check_batch_fits, check_sample_arguments, seeded_generator
from tv_lens.tasks.text_batch import answer_start, first_answer_token, to_batch
from tv_lens.tasks.text_task import Example, TextTask, check_text

__all__ = ["TextPool", "TextTask"]


@dataclass(frozen=True, eq=False)
class TextPool(PoolTasks):
    """Text tasks rendered and tokenized for one tokenizer.

    Attributes:
        tasks: The tasks (at least one; names unique, ``"null"`` reserved).
        tokenizer: A HuggingFace fast tokenizer or a ``tokenizers.Tokenizer``.
        template: One demonstration, with ``{x}`` before ``{y}``, each exactly once.
        separator: Text between demonstrations (and before the query).
        null: Whether to add the Null task.
        bos: Start every prompt with the tokenizer's BOS token.
        filter_examples: Drop examples the tokenizer cannot represent (``False``: raise instead).
        answer_tokens: ``"all"`` answer tokens, or only the ``"first"``.
        examples: Kept examples of each task, after filtering (computed).
        dropped: ``(task, input, output, reason)`` of every dropped example (computed).
    """

    tasks: tuple[TextTask, ...]
    tokenizer: Any
    template: str = "{x}->{y}"
    separator: str = "\n"
    null: bool = False
    bos: bool = False
    filter_examples: bool = True
    answer_tokens: Literal["all", "first"] = "all"
    examples: tuple[tuple[Example, ...], ...] = field(init=False, repr=False)
    dropped: tuple[tuple[str, str, str, str], ...] = field(init=False, repr=False)
    _encoder: TextEncoder = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._check_tasks(TextTask, "TextTask(name, pairs)")
        check_flag(self.bos, "bos", "start every prompt with the BOS token")
        check_flag(self.filter_examples, "filter_examples", "drop the examples the tokenizer cannot represent")
        if self.answer_tokens not in ("all", "first"):
            raise TaskError(f"answer_tokens must be 'all' or 'first', got {self.answer_tokens!r}.")
        if not isinstance(self.separator, str):
            raise TaskError(f"separator must be a string (the text between demonstrations), got {self.separator!r}.")
        self._split_template()
        check_text("TextPool: the template or separator", (self.template, self.separator))
        encoder = TextEncoder(self.tokenizer)
        if self.bos and encoder.bos_id is None:
            raise TaskError(
                "bos=True but the tokenizer has no BOS token; set one (PreTrainedTokenizerFast(..., bos_token=...)) "
                "or use bos=False."
            )
        object.__setattr__(self, "_encoder", encoder)
        kept, dropped = [], []
        for task in self.tasks:
            reasons = self._problems(task.examples)
            for (x, y), reason in zip(task.examples, reasons, strict=True):
                if reason and not self.filter_examples:
                    raise TaskError(
                        f"Task {task.name!r}: the tokenizer cannot represent example {x!r} -> {y!r} ({reason}). "
                        "Pass filter_examples=True to drop such examples, or use a tokenizer that covers them."
                    )
                if reason:
                    dropped.append((task.name, x, y, reason))
            kept.append(tuple(e for e, r in zip(task.examples, reasons, strict=True) if not r))
            if not kept[-1]:
                raise TaskError(
                    f"Task {task.name!r}: the tokenizer can represent none of its {len(task.examples)} examples "
                    f"(e.g. {dropped[-1][1]!r} -> {dropped[-1][2]!r}: {dropped[-1][3]}); check the tokenizer/template."
                )
        object.__setattr__(self, "examples", tuple(kept))
        object.__setattr__(self, "dropped", tuple(dropped))

    @property
    def vocab_size(self) -> int:
        """Token ids of the tokenizer (a model needs ``d_vocab >= vocab_size``)."""
        return self._encoder.vocab_size

    def _split_template(self) -> tuple[str, str, str, str]:
        """``(before x, between x and the answer, whitespace moved to the answer, after y)``."""
        t = self.template
        if not isinstance(t, str) or t.count("{x}") != 1 or t.count("{y}") != 1 or t.index("{x}") > t.index("{y}"):
            raise TaskError(f"template must contain '{{x}}' then '{{y}}', each once, e.g. '{{x}}->{{y}}'; got {t!r}.")
        pre, rest = t.split("{x}")
        mid, post = rest.split("{y}")
        stripped = mid.rstrip()
        return pre, stripped, mid[len(stripped) :], post

    def _problems(self, examples: Sequence[Example]) -> list[str]:
        """Why the tokenizer cannot represent each example as a query (``""`` when it can)."""
        pre, mid, moved, _ = self._split_template()
        queries = [pre + x + mid for x, _ in examples]
        texts = [q + moved + y for q, (_, y) in zip(queries, examples, strict=True)]
        encoder = self._encoder
        fulls = encoder.encode(texts)
        firsts, prompts = [], []  # the prompt: the query, and any token of only the whitespace before the answer
        for query, full, text in zip(queries, fulls, texts, strict=True):
            firsts.append(first := first_answer_token(full, len(query), text))
            # up to the end of the prompt's last token: the answer's first token may start at its leading space,
            # which a tokenizer that trims offsets (GPT-NeoX's) leaves out of that token's span
            prompts.append(text[: full.ends[first - 1]] if 0 < first < len(full.ids) else text)
        problems = []
        for query, full, first, alone in zip(queries, fulls, firsts, encoder.encode(prompts), strict=True):
            if encoder.unk_id is not None and encoder.unk_id in full.ids:
                problems.append("unknown token")
            elif first == 0:
                problems.append("the query prompt encodes to no token")
            elif first >= len(full.ids):
                problems.append("the answer encodes to no token")
            elif full.starts[first] < len(query):
                problems.append("a token spans the end of the query prompt and the start of the answer")
            elif alone.ids != full.ids[:first]:
                problems.append("the query prompt tokenizes differently without its answer")
            else:
                problems.append("")
        return problems

    def check_tokenizer(self, tokenizer: Any) -> None:
        """Raise a :class:`TaskError` where ``tokenizer`` (a model's) splits the pool's text into other tokens.

        Prompts are token ids, so a pool built with another tokenizer would give a model ids of another vocabulary.
        Up to 16 examples of each task are compared; a tokenizer tv_lens cannot read is not compared.
        """
        if tokenizer is None or tokenizer is self.tokenizer:
            return
        try:
            other = TextEncoder(tokenizer)
        except TaskError:
            return
        pre, mid, moved, _ = self._split_template()
        texts = [pre + x + mid + moved + y for examples in self.examples for x, y in examples[:16]]
        for text, ours, theirs in zip(texts, self._encoder.encode(texts), other.encode(texts), strict=True):
            if ours.ids != theirs.ids:
                raise TaskError(
                    f"The TextPool's tokenizer splits {text!r:.60} into the ids {ours.ids[:8]} but the model's "
                    f"tokenizer into {theirs.ids[:8]}: the model would read the ids of another vocabulary. Build the "
                    "pool with the model's own tokenizer, TextPool(tasks, model.tokenizer, ...), one pool per model."
                )

    def query_inputs(self, batch: ICLBatch) -> list[str | None]:
        """The input string of every prompt's query, read back from its tokens.

        A query is matched up to whitespace at its ends: a decoder may drop the space a template starts with
        (SentencePiece's leading ``▁``), and a whitespace token may hold an input's trailing space with the template's.
        ``None`` where the query is not one of this pool's inputs (e.g. a batch of another pool), or where two inputs
        have the same tokens (or differ only in whitespace at their ends).
        """
        pre, mid, _, _ = self._split_template()
        known: dict[str, str | None] = {}
        for key, x in self._inputs_by_text().items():
            query = (pre + key + mid).strip()
            known[query] = x if known.get(query, x) == x else None
        inputs: list[str | None] = []
        rows = zip(batch.inputs.tolist(), batch.query_start.tolist(), batch.answer_pos.tolist(), strict=True)
        for row, start, end in rows:
            text = self._encoder.decode(row[start : end + 1])
            # up to whitespace at its ends (a tokenizer's prefix space, RoBERTa's, too), without any of the separator
            # merged into the query's first token
            candidates = [text, text.lstrip(self.separator)] if self.separator else [text]
            inputs.append(next((x for c in candidates if (x := known.get(c.strip())) is not None), None))
        return inputs

    def _inputs_by_text(self) -> dict[str, str | None]:
        """Every kept input, keyed by itself and by the text its tokens decode to (``None``: two inputs share a key).

        A tokenizer's normalizer changes the text it encodes (GPT-NeoX's and Qwen2's compose accents, NFC), so a
        query's tokens can decode to another string than its input, and two inputs to the same tokens.
        """
        inputs = list(dict.fromkeys(x for examples in self.examples for x, _ in examples))
        table: dict[str, str | None] = {}
        for x, encoded in zip(inputs, self._encoder.encode(inputs), strict=True):
            for key in {x, self._encoder.decode(encoded.ids)}:
                table[key] = x if table.get(key, x) == x else None
        return table

    def target_answers(self, batch: ICLBatch, task_names: Sequence[str]) -> Int[Tensor, "task batch 1"]:
        """The first answer token each named task gives for every prompt's query, ``[task, batch, 1]``.

        A task gives an answer where the query's input is one of its (kept) examples with a single output;
        ``-1`` elsewhere (the Null task, inputs the task does not cover, or an answer whose first token would
        merge with the query). Only the first token is given: under teacher forcing the later answer positions
        read the prompt's own answer, so they cannot follow another task.
        """
        pre, mid, moved, _ = self._split_template()
        queries = self.query_inputs(batch)
        out = torch.full((len(task_names), len(batch), 1), -1, dtype=torch.long)
        tables = {task.name: _lookup(examples) for task, examples in zip(self.tasks, self.examples, strict=True)}
        for t, name in enumerate(task_names):
            table = tables.get(name, {})
            rows = [(i, x, y) for i, x in enumerate(queries) if x is not None and (y := table.get(x)) is not None]
            texts = [pre + x + mid + moved + y for _, x, y in rows]
            for (i, x, _), text, encoded in zip(rows, texts, self._encoder.encode(texts), strict=True):
                boundary = len(pre + x + mid)
                first = first_answer_token(encoded, boundary, text)
                if 0 < first < len(encoded.ids) and encoded.starts[first] >= boundary:
                    out[t, i, 0] = encoded.ids[first]
        return out

    def sample(
        self, n_per_task: int, n_shots: ShotSpec, seed: int, label_noise: float = 0.0, *, shuffle_labels: bool = False
    ) -> ICLBatch:
        """Sample ``n_per_task`` prompts of every task (Null included), ordered by task id.

        Each prompt's demonstrations and query are examples of its task with distinct inputs, so no demonstration
        shows the query's input (an input listed with several outputs gives one of them, drawn at random).
        ``shuffle_labels`` permutes the outputs of a real task's demonstrations among them (Todd et al.'s
        corruption), before any label noise.

        Args:
            n_per_task: Prompts per task (>= 1).
            n_shots: Demonstrations per prompt: an int, an inclusive ``(min, max)`` tuple or a ``range``.
            seed: Seed of the local generator; the same seed gives an identical batch.
            label_noise: Probability in ``[0, 1)`` that a demonstration of a real task gets a wrong output (another
                output of the pool's tasks, drawn as the Null task draws them until it differs).
            shuffle_labels: Permute each prompt's demonstration outputs.
        """
        check_sample_arguments(n_per_task, label_noise, shuffle_labels)
        choices = _shot_choices(n_shots)
        inputs = tuple(dict.fromkeys(x for examples in self.examples for x, _ in examples))
        outputs = tuple(dict.fromkeys(y for examples in self.examples for _, y in examples))
        if label_noise > 0 and len(outputs) < 2:
            raise TaskError(
                f"label_noise={label_noise} replaces demonstration outputs by other outputs of the pool's tasks, but "
                f"every example has the output {outputs[0]!r:.40}, so none would change; add tasks or examples with "
                "other outputs, or sample with label_noise=0."
            )
        need = choices.max + 1
        groups = [_by_input(examples) for examples in self.examples]
        sizes = {t.name: len(g) for t, g in zip(self.tasks, groups, strict=True)}
        sizes.update({NULL_TASK: len(inputs)} if self.null else {})
        short = {name: size for name, size in sizes.items() if size < need}
        if short:
            raise TaskError(
                f"n_shots up to {need - 1} needs {need} distinct examples per prompt (examples of distinct inputs, so "
                f"no demonstration shows the query's input), but task(s) {short} have fewer usable inputs; use fewer "
                "shots or more examples."
            )
        gen = seeded_generator(seed)
        check_batch_fits(n_per_task, len(self) * n_per_task, need - 1, 8 * 2)  # two tokens per example, at least
        task_ids = torch.arange(len(self)).repeat_interleave(n_per_task)
        shots = choices.draw(len(task_ids), gen)
        prompts = [
            self._draw_prompt(int(tid), int(k) + 1, inputs, groups, label_noise, gen, shuffle_labels)
            for tid, k in zip(task_ids.tolist(), shots.tolist(), strict=True)
        ]
        return self._render(prompts, task_ids, shots)

    def _random_output(self, gen: torch.Generator) -> str:
        task = int(torch.randint(len(self.tasks), (1,), generator=gen))
        return self.examples[task][int(torch.randint(len(self.examples[task]), (1,), generator=gen))][1]

    def _draw_prompt(
        self,
        tid: int,
        k: int,
        inputs: tuple[str, ...],
        groups: list[list[list[int]]],
        label_noise: float,
        gen: torch.Generator,
        shuffle_labels: bool = False,
    ) -> list[tuple[str, str, bool]]:
        """``k`` (input, output, noisy) triples of distinct inputs: ``k - 1`` demonstrations, then the query.

        ``groups[tid]`` lists the indices of the task's examples of each distinct input.
        """
        if tid == len(self.tasks):  # Null
            order = torch.randperm(len(inputs), generator=gen)[:k].tolist()
            return [(inputs[i], self._random_output(gen), False) for i in order]
        examples, by_input = self.examples[tid], groups[tid]
        picked = [by_input[i] for i in torch.randperm(len(by_input), generator=gen)[:k].tolist()]
        # one example of each drawn input; a random one where the input has several (no draw where it has one, so a
        # task of distinct inputs draws exactly as it would from its examples)
        chosen = [
            group[int(torch.randint(len(group), (1,), generator=gen))] if len(group) > 1 else group[0]
            for group in picked
        ]
        drawn = [(*examples[i], False) for i in chosen]
        rights = [y for _, y, _ in drawn]
        if shuffle_labels:
            order = torch.randperm(k - 1, generator=gen).tolist()
            drawn[: k - 1] = [(drawn[j][0], rights[i], rights[i] != rights[j]) for j, i in enumerate(order)]
        for j in range(k - 1):
            if float(torch.rand((), generator=gen)) < label_noise:
                # a random output that differs from the one shown: drawn again until it does (sample checked that the
                # pool has another output), so the share of wrong labels is label_noise however skewed the outputs
                wrong = self._random_output(gen)
                while wrong == drawn[j][1]:
                    wrong = self._random_output(gen)
                drawn[j] = (drawn[j][0], wrong, wrong != rights[j])
        return drawn

    def _render(
        self, prompts: list[list[tuple[str, str, bool]]], task_ids: torch.Tensor, shots: torch.Tensor
    ) -> ICLBatch:
        """Tokenize whole prompts and locate demonstrations, query and answer by character offsets."""
        pre, mid, moved, post = self._split_template()
        texts, marks = [], []
        for pairs in prompts:
            text, demo_chars = "", []
            for x, y, _ in pairs[:-1]:
                answer_char = len(text + pre + x + mid) + len(moved + y) - len((moved + y).lstrip())
                demo_chars.append((len(text), answer_char, len(text + pre + x + mid + moved + y)))
                text += pre + x + mid + moved + y + post + self.separator
            query = text + pre + pairs[-1][0] + mid
            marks.append((demo_chars, len(text), len(query)))
            texts.append(query + moved + pairs[-1][1])
        encoded = self._encoder.encode(texts)
        bos_id, pad = self._encoder.bos_id, self._encoder.pad_id
        prefix = [bos_id] if self.bos and bos_id is not None else []
        rows, answers, answer_pos, query_start, demos = [], [], [], [], []
        for i, (enc, (demo_chars, query_char, boundary)) in enumerate(zip(encoded, marks, strict=True)):
            first = answer_start(enc, boundary, texts[i])
            rows.append(prefix + enc.ids)
            answers.append(enc.ids[first:] if self.answer_tokens == "all" else enc.ids[first : first + 1])
            answer_pos.append(len(prefix) + first - 1)
            query_start.append(len(prefix) + enc.token_at(query_char))
            demos.append(_demonstration_tokens(enc, demo_chars, query_char, len(prefix)))
        noisy = [[noisy for *_, noisy in pairs[:-1]] for pairs in prompts]
        return to_batch(rows, answers, answer_pos, query_start, demos, noisy, task_ids, shots, self.task_names, pad)


def _demonstration_tokens(
    enc: Encoded, demo_chars: list[tuple[int, int, int]], query_char: int, shift: int
) -> list[tuple[int, int, int]]:
    """Each demonstration's (first token, token before its answer, one past its answer) from character offsets.

    The answer ends after the token that holds its last character, or at the next demonstration's (or the query's)
    first token where the tokenizer merged the two.
    """
    starts = [enc.token_at(start) for start, _, _ in demo_chars] + [enc.token_at(query_char)]
    return [
        (shift + first, shift + enc.token_at(answer) - 1, shift + min(enc.token_at(end - 1) + 1, following))
        for (_, answer, end), first, following in zip(demo_chars, starts[:-1], starts[1:], strict=True)
    ]


def _by_input(examples: Sequence[Example]) -> list[list[int]]:
    """The indices of the examples of each distinct input, in the order the inputs first appear."""
    groups: dict[str, list[int]] = {}
    for i, (x, _) in enumerate(examples):
        groups.setdefault(x, []).append(i)
    return list(groups.values())


def _lookup(examples: Sequence[Example]) -> dict[str, str | None]:
    """Input → output of a task's examples; ``None`` for an input listed with two different outputs."""
    table: dict[str, str | None] = {}
    for x, y in examples:
        table[x] = y if table.get(x, y) == y else None
    return table
