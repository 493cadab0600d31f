"""Text tasks through locally trained tokenizers: rules, positions, seeds, Null, templates, filtering, errors."""

from __future__ import annotations

import copy
import unicodedata
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import BACKENDS, tiny_config
from scipy.stats import chi2_contingency
from text_tokenizers import byte_bpe, qwen_like, sentencepiece_like, word_level
from tokenizers import normalizers, pre_tokenizers, processors

from tv_lens.errors import PositionError, ShapeError, TaskError
from tv_lens.interventions import run_with_interventions
from tv_lens.metrics import answer_logits
from tv_lens.models import build_model
from tv_lens.tasks import NULL_TASK, POS_TAGS, ICLBatch, TextPool, TextTask, bitwise_text_tasks, pos_tasks
from tv_lens.tasks.encoding import Encoded
from tv_lens.tasks.lexicon import LEXICON, generate_sentences
from tv_lens.tasks.text import _demonstration_tokens

TAG_OF = {word: tag for tag, words in LEXICON.items() for word in words}
TOKENIZERS = {"word_level": word_level, "byte_bpe": byte_bpe}


def text(tokenizer, ids) -> str:
    """Decoded ids with whitespace normalised (WordLevel decoding joins tokens with spaces)."""
    return " ".join(tokenizer.decode([int(i) for i in ids]).replace("->", " -> ").split())


def decode(batch: ICLBatch, tokenizer, i: int, bos: bool = False) -> tuple[list[tuple[str, str, bool]], str, str]:
    """Demonstrations (x, y, noisy), query x and answer of prompt i, read from tokens and boundaries only."""
    ids = batch.inputs[i, : int(batch.lengths[i])].tolist()
    n_answer, ap = int(batch.answer_lengths[i]), int(batch.answer_pos[i])
    assert ids[ap + 1 :] == batch.answers[i, :n_answer].tolist()  # the answer ends the prompt, teacher-forced
    assert (batch.answers[i, n_answer:] == -1).all()
    assert text(tokenizer, ids[ap : ap + 1]).endswith(">")  # the token before the answer ends the arrow
    if bos:
        assert ids[0] == tokenizer.bos_token_id and int(batch.demo_start[i, 0] if batch.n_shots[i] else 1) == 1
    starts = [*batch.demo_start[i, : int(batch.n_shots[i])].tolist(), int(batch.query_start[i])]
    demos = []
    for j, start in enumerate(starts[:-1]):
        before = int(batch.demo_answer_pos[i, j])
        assert start < before < starts[j + 1]
        x = text(tokenizer, ids[start : before + 1])
        assert x.endswith(" ->")
        demos.append(
            (x.removesuffix(" ->"), text(tokenizer, ids[before + 1 : starts[j + 1]]), bool(batch.demo_noisy[i, j]))
        )
    query = text(tokenizer, ids[starts[-1] : ap + 1])
    assert query.endswith(" ->")
    return demos, query.removesuffix(" ->"), text(tokenizer, batch.answers[i, :n_answer].tolist())


def first_with_tag(sentence: str, tag: str) -> str:
    return next(word for word in sentence.split() if TAG_OF[word] == tag)


def bitwise(task: str, x: str) -> str:
    a, b = (int(v, 2) for v in x.split())
    n = len(x.split()[0])
    z = {"and": a & b, "or": a | b, "xor": a ^ b}[task.removeprefix("n") if task != "xnor" else "xor"]
    z = z ^ ((1 << n) - 1) if task in ("nand", "nor", "xnor") else z
    return format(z, f"0{n}b")


@pytest.mark.parametrize("tok", sorted(TOKENIZERS))
@pytest.mark.parametrize("family", ["pos", "bitwise"])
def test_rule_holds_on_every_prompt(tok: str, family: str) -> None:
    tokenizer = TOKENIZERS[tok]()
    tasks = pos_tasks(n_sentences=128) if family == "pos" else bitwise_text_tasks(n_examples=128)
    rule = first_with_tag if family == "pos" else lambda x, task: bitwise(task, x)
    pool = TextPool(tasks, tokenizer, null=True)
    assert pool.dropped == ()  # both tokenizers cover every word and digit
    batch = pool.sample(n_per_task=12, n_shots=(0, 4), seed=0, label_noise=0.25)
    assert set(batch.n_shots.tolist()) == set(range(5)) and len(set(batch.lengths.tolist())) > 3
    n_noisy = 0
    for i in range(len(batch)):
        task = batch.task_names[int(batch.task_ids[i])]
        demos, query, answer = decode(batch, tokenizer, i)
        if task == NULL_TASK:
            assert not any(noisy for *_, noisy in demos)
            continue
        assert answer == rule(query, task)  # queries are never noisy
        for x, y, noisy in demos:
            assert (y == rule(x, task)) != noisy
            n_noisy += noisy
    assert n_noisy > 0


def test_multi_token_answers_of_different_lengths() -> None:
    tokenizer = byte_bpe()
    batch = TextPool(bitwise_text_tasks(n_examples=64), tokenizer).sample(n_per_task=8, n_shots=(0, 2), seed=1)
    lengths = batch.answer_lengths
    assert int(lengths.min()) >= 1 and len(set(lengths.tolist())) > 1 and batch.n_answer_tokens == int(lengths.max())
    assert batch.inputs.shape[1] >= int((batch.answer_pos + batch.n_answer_tokens).max())
    first = TextPool(bitwise_text_tasks(n_examples=64), tokenizer, answer_tokens="first").sample(8, (0, 2), seed=1)
    assert first.n_answer_tokens == 1 and torch.equal(first.answers[:, 0], batch.answers[:, 0])
    assert torch.equal(first.inputs, batch.inputs)  # the whole answer stays in the prompt


@pytest.mark.parametrize("backend", BACKENDS)
def test_text_batch_runs_on_a_model(backend: str) -> None:
    tokenizer = byte_bpe()
    pool = TextPool(pos_tasks(n_sentences=32), tokenizer, null=True, bos=True)
    batch = pool.sample(n_per_task=2, n_shots=(0, 2), seed=2)
    model = build_model(tiny_config(backend, d_vocab=pool.vocab_size, n_layers=1, n_ctx=128, dtype="float64"))
    # Every answer column lies inside every row, so a teacher-forced run reads all of them.
    run = run_with_interventions(model, batch.inputs, batch.answer_pos, [], n_answer_tokens=batch.n_answer_tokens)
    assert run.logits.shape == (len(batch), batch.n_answer_tokens, pool.vocab_size)
    full = answer_logits(model(batch.inputs), batch.answer_pos, batch.n_answer_tokens)
    torch.testing.assert_close(run.logits, full, atol=1e-9, rtol=1e-9)


def test_same_seed_same_batch() -> None:
    pool = TextPool(pos_tasks(n_sentences=64), byte_bpe(), null=True)
    a, b = pool.sample(5, (0, 3), seed=3, label_noise=0.3), pool.sample(5, (0, 3), seed=3, label_noise=0.3)
    c = pool.sample(5, (0, 3), seed=4, label_noise=0.3)
    fields = ["inputs", "attention_mask", "answer_pos", "answers", "task_ids", "n_shots", "demo_start"]
    fields += ["demo_answer_pos", "demo_noisy", "query_start"]
    assert all(torch.equal(getattr(a, f), getattr(b, f)) for f in fields)
    assert not torch.equal(a.inputs[:, :20], c.inputs[:, :20])


def test_null_answers_are_independent_of_the_query() -> None:
    tokenizer = byte_bpe()
    pool = TextPool(bitwise_text_tasks(ops=("and", "or"), n_bits=3, n_examples=64), tokenizer, null=True)
    batch = pool.sample(n_per_task=500, n_shots=1, seed=5)
    tables = {name: torch.zeros(2, 2, dtype=torch.long) for name in batch.task_names}
    for i in range(len(batch)):
        _, query, answer = decode(batch, tokenizer, i)
        tables[batch.task_names[int(batch.task_ids[i])]][int(query[0]), int(answer[0])] += 1
    assert chi2_contingency(tables[NULL_TASK].numpy()).pvalue > 1e-3
    assert chi2_contingency(tables["and"].numpy()).pvalue < 1e-6  # the statistic does detect dependence


def test_zero_shot_twin_keeps_query_and_answer() -> None:
    tokenizer = byte_bpe()
    batch = TextPool(pos_tasks(n_sentences=64), tokenizer, null=True, bos=True).sample(4, (0, 3), seed=6)
    zero = batch.zero_shot()
    for i in range(len(batch)):
        qs, ap, n = int(batch.query_start[i]), int(batch.answer_pos[i]), int(batch.answer_lengths[i])
        expected = [tokenizer.bos_token_id, *batch.inputs[i, qs : ap + 1 + n].tolist()]
        assert zero.inputs[i, : int(zero.lengths[i])].tolist() == expected
        assert int(zero.answer_pos[i]) == ap - qs + 1 and int(zero.query_start[i]) == 1
        _, query, answer = decode(zero, tokenizer, i, bos=True)
        assert (query, answer) == decode(batch, tokenizer, i, bos=True)[1:]
    assert torch.equal(zero.answers, batch.answers) and (zero.n_shots == 0).all()
    assert zero.inputs.shape[1] >= int((zero.answer_pos + zero.n_answer_tokens).max())
    sub = batch.select(batch.answer_lengths == 1)
    assert sub.n_answer_tokens == 1 and sub.inputs.shape[1] == int(sub.lengths.max())


@pytest.mark.parametrize(("template", "separator"), [("{x} -> {y}", "\n"), ("Q: {x}\nA: {y}.", "\n\n")])
def test_templates(template: str, separator: str) -> None:
    tokenizer = byte_bpe()
    pool = TextPool(pos_tasks(n_sentences=64), tokenizer, template=template, separator=separator)
    batch = pool.sample(n_per_task=3, n_shots=2, seed=7)
    for i in range(len(batch)):
        ids = batch.inputs[i, : int(batch.lengths[i])].tolist()
        ap, qs = int(batch.answer_pos[i]), int(batch.query_start[i])
        sentence = tokenizer.decode(ids[qs : ap + 1])
        answer = tokenizer.decode(batch.answers[i, : int(batch.answer_lengths[i])].tolist())
        pre, mid = template.split("{x}")[0], template.split("{x}")[1].split("{y}")[0]
        # The query prompt; its trailing space moves to the answer unless it is a token of its own.
        assert sentence.startswith(pre) and sentence.rstrip().endswith(mid.rstrip())
        x = sentence.removeprefix(pre).rstrip().removesuffix(mid.rstrip())
        assert sentence + answer == pre + x + mid + first_with_tag(x, batch.task_names[int(batch.task_ids[i])])
        assert tokenizer.decode(batch.answers[i, :1].tolist()).strip() != ""
        assert tokenizer.decode(ids[: batch.demo_start[i, 1]]).endswith(template.split("{y}")[1] + separator)


def test_unknown_words_are_dropped_or_raise() -> None:
    tokenizer = word_level(drop=("dog", "cat"))
    tasks = pos_tasks(n_sentences=128)
    pool = TextPool(tasks, tokenizer, null=True)
    assert pool.dropped and all(reason == "unknown token" for *_, reason in pool.dropped)
    assert all({"dog", "cat"} & set(f"{x} {y}".split()) for _, x, y, _ in pool.dropped)
    kept = {x for examples in pool.examples for x, _ in examples}
    assert kept and not any({"dog", "cat"} & set(x.split()) for x in kept)
    assert sum(len(e) for e in pool.examples) + len(pool.dropped) == sum(len(t.examples) for t in tasks)
    batch = pool.sample(n_per_task=20, n_shots=(0, 3), seed=0)
    assert not (batch.inputs == tokenizer.token_to_id("[UNK]")).any()
    with pytest.raises(TaskError, match=r"cannot represent example .*\(unknown token\).*filter_examples=True"):
        TextPool(tasks, tokenizer, filter_examples=False)


def test_tokens_spanning_query_and_answer_are_caught() -> None:
    tasks = bitwise_text_tasks(ops=("and",), n_examples=64)
    pool = TextPool(tasks, byte_bpe(), template="{x}{y}")  # digits of x and y merge into shared tokens
    assert pool.dropped and all("spans the end of the query" in reason for *_, reason in pool.dropped)
    with pytest.raises(TaskError, match="spans the end of the query prompt"):
        TextPool(tasks, byte_bpe(), template="{x}{y}", filter_examples=False)


def test_lexicon_and_generated_sentences() -> None:
    words = [w for ws in LEXICON.values() for w in ws]
    assert len(words) == len(set(words))  # every word has one tag
    sentences = generate_sentences(200, seed=0)
    assert len(set(sentences)) == 200
    positions = {tag: set() for tag in POS_TAGS}
    for sentence in sentences:
        tags = [tag for _, tag in sentence]
        assert set(POS_TAGS) <= set(tags) and all(TAG_OF[w] == t for w, t in sentence)
        for tag in POS_TAGS:
            positions[tag].add(tags.index(tag))
    assert all(len(p) > 1 for p in positions.values())  # the answer is not at a fixed position


def test_variable_answer_validation() -> None:
    batch = TextPool(bitwise_text_tasks(n_examples=32), byte_bpe()).sample(4, 1, seed=0)
    assert (batch.answers == -1).any()
    hole = batch.answers.clone()
    hole[:, 0] = -1
    with pytest.raises(ShapeError, match="right-padded with -1"):
        replace(batch, answers=hole)
    short = batch.answer_lengths.argmin()
    wrong = batch.answers.clone()
    wrong[short, -1] = 0
    with pytest.raises(PositionError, match=r"answers must equal|answer_pos"):
        replace(batch, answers=wrong)


def test_bad_requests_name_the_fix() -> None:
    tokenizer = word_level()
    tasks = pos_tasks(n_sentences=16)
    with pytest.raises(TaskError, match=r"template must contain '\{x\}' then '\{y\}'"):
        TextPool(tasks, tokenizer, template="{y} <- {x}")
    with pytest.raises(TaskError, match=r"template must contain"):
        TextPool(tasks, tokenizer, template="{x} ->")
    with pytest.raises(TaskError, match=r"Unknown POS tag\(s\) \['determiner'\].*'noun'"):
        pos_tasks(tags=("noun", "determiner"))
    with pytest.raises(TaskError, match=r"Unknown bitwise op\(s\) \['not'\].*'and'"):
        bitwise_text_tasks(ops=("not",))
    with pytest.raises(TaskError, match=r"n_examples must be an int in 1 \.\. 16 .*, got 17; pass n_examples=16"):
        bitwise_text_tasks(n_bits=2, n_examples=17)
    with pytest.raises(TaskError, match="at least one task"):
        TextPool((), tokenizer)
    with pytest.raises(TaskError, match="has no examples"):
        TextTask("empty", ())
    with pytest.raises(TaskError, match="unique"):
        TextPool((tasks[0], tasks[0]), tokenizer)
    pool = TextPool((TextTask("tiny", (("dog", "cat"), ("cat", "dog"), ("big", "small"))),), tokenizer, null=True)
    with pytest.raises(TaskError, match=r"n_shots must be an int >= 0"):
        pool.sample(2, n_shots=-1, seed=0)
    with pytest.raises(TaskError, match=r"needs 4 distinct examples.*'tiny': 3.* have fewer usable inputs"):
        pool.sample(2, n_shots=3, seed=0)
    with pytest.raises(TaskError, match="Cannot tokenize with a dict"):
        TextPool(tasks, {"dog": 1})
    with pytest.raises(TaskError, match="no BOS token"):
        TextPool(tasks, tokenizer, bos=True)
    with pytest.raises(
        (TaskError, TypeError), match=r"answer_tokens must be 'all' or 'first'|parameter 'answer_tokens'"
    ):
        TextPool(tasks, tokenizer, answer_tokens="last")  # type: ignore[arg-type]


@pytest.mark.parametrize("make", [sentencepiece_like, qwen_like], ids=["sentencepiece", "qwen"])
def test_a_token_of_the_space_before_the_answer_stays_with_the_prompt(make) -> None:
    """Where a tokenizer gives the space before digits a token of its own, the prompt ends with it: its last token
    predicts the answer's first digit, in the query and in every demonstration, and each task's first answer token
    tells the tasks apart (it would be the space token for every task otherwise)."""
    tokenizer = make()
    tasks = bitwise_text_tasks(n_examples=40, seed=0)
    lookup = {task.name: dict(task.examples) for task in tasks}
    pool = TextPool(tasks, tokenizer, template="{x} -> {y}", null=False)
    assert pool.dropped == ()
    batch = pool.sample(n_per_task=3, n_shots=2, seed=1)
    targets = pool.target_answers(batch, batch.task_names)
    n_differ = 0
    for i in range(len(batch)):
        row = batch.inputs[i, : int(batch.lengths[i])].tolist()
        assert tokenizer(tokenizer.decode(row), add_special_tokens=False).input_ids == row  # its natural tokens
        ap, qs = int(batch.answer_pos[i]), int(batch.query_start[i])
        spaces = [ap] + [int(p) for p in batch.demo_answer_pos[i] if p >= 0]
        assert {tokenizer.convert_ids_to_tokens(row[p]) for p in spaces} <= {"▁", "Ġ"}  # the prompt ends with a space
        x = tokenizer.decode(row[qs : ap + 1]).strip().removesuffix("->").strip()
        answer = batch.answers[i, : int(batch.answer_lengths[i])].tolist()
        assert tokenizer.decode(answer) == lookup[batch.task_names[int(batch.task_ids[i])]][x]
        firsts = [tokenizer.convert_tokens_to_ids(lookup[name][x][0]) for name in batch.task_names]
        assert targets[:, i, 0].tolist() == firsts  # each task's first digit, not the space
        n_differ += len(set(firsts)) > 1
    assert n_differ > 0


@pytest.mark.parametrize("template", ["{x} -> {y}", "Q: {x}\nA: {y}", "{x} {y}"])
def test_a_tokenizer_that_trims_offsets_gives_the_same_examples_and_prompts(template: str) -> None:
    """GPT-NeoX's tokenizer (Pythia's) trims the space before a word out of the word's offsets (the ByteLevel
    post-processor's ``trim_offsets``): the same tokens, so the same kept examples and the same prompts. Before,
    nearly every example whose answer follows a space was dropped ("tokenizes differently without its answer")."""
    trimmed = copy.deepcopy(byte_bpe())
    trimmed.backend_tokenizer.post_processor = processors.ByteLevel(trim_offsets=True)
    spans = [
        tokenizer("hot -> cold", return_offsets_mapping=True)["offset_mapping"] for tokenizer in (byte_bpe(), trimmed)
    ]
    moved = [(a, b) for a, b in zip(*spans, strict=True) if a != b]
    assert moved and all(b == (a[0] + 1, a[1]) for a, b in moved)  # the spans of " ->", " c...": after the space
    tasks = (*pos_tasks(n_sentences=64)[:2], *bitwise_text_tasks(ops=("and", "xor"), n_bits=4))
    pools = [TextPool(tasks, tokenizer, template=template, null=True) for tokenizer in (byte_bpe(), trimmed)]
    assert pools[0].dropped == pools[1].dropped == ()
    assert pools[0].examples == pools[1].examples
    batches = [pool.sample(n_per_task=4, n_shots=(0, 3), seed=0) for pool in pools]
    for name in ("inputs", "answers", "answer_pos", "query_start", "demo_start", "demo_answer_pos", "demo_answer_end"):
        assert torch.equal(getattr(batches[0], name), getattr(batches[1], name)), name
    assert pools[0].query_inputs(batches[0]) == pools[1].query_inputs(batches[1])


def test_queries_are_read_back_through_a_tokenizer_that_normalizes_them() -> None:
    """GPT-NeoX's and Qwen2's tokenizers compose accents (NFC): an input written decomposed (NFD) decodes to another
    string, and is still its query's input, so each task's answer to it is known (overriding reads it). Two inputs
    with the same tokens give no input."""
    tokenizer = copy.deepcopy(byte_bpe())
    tokenizer.backend_tokenizer.normalizer = normalizers.NFC()
    words = ("café", "naïve", "résumé", "über", "señor", "crème", "brûlée", "déjà")
    decomposed = [unicodedata.normalize("NFD", word) for word in words]
    assert all(word != twin for word, twin in zip(words, decomposed, strict=True))
    upper = TextTask("upper", tuple((x, x.upper()) for x in decomposed))
    pool = TextPool((upper, TextTask("same", tuple((x, x) for x in decomposed))), tokenizer, template="{x} -> {y}")
    batch = pool.sample(n_per_task=4, n_shots=2, seed=0)
    queries = pool.query_inputs(batch)
    assert set(queries) <= set(decomposed)  # every query found, as it was given
    for i, x in enumerate(queries):
        prompt = tokenizer.decode(batch.inputs[i, : int(batch.answer_pos[i]) + 1].tolist())
        assert prompt.rstrip().endswith(unicodedata.normalize("NFC", x) + " ->")
    assert torch.equal(
        pool.target_answers(batch, batch.task_names)[batch.task_ids, torch.arange(len(batch)), 0], batch.answers[:, 0]
    )
    both = TextPool((TextTask("same", (("café", "a"), (decomposed[0], "b"), ("big", "c"))),), tokenizer)
    assert set(both.query_inputs(both.sample(n_per_task=6, n_shots=0, seed=0))) == {None, "big"}


@pytest.mark.parametrize(
    ("pieces", "expected"),
    [
        # "a->b\n" "c->d\n" "e->": each answer one token, the newline a token of its own
        (["a", "->", "b", "\n", "c", "->", "d", "\n", "e", "->"], [(0, 1, 3), (4, 5, 7)]),
        # the answer's last character and the newline in one token: the token is the answer's
        (["a", "->", "b\n", "c", "->", "d\n", "e", "->"], [(0, 1, 3), (3, 4, 6)]),
        # the answer, the newline and the next input in one token: the answer ends where the next one starts
        (["a", "->", "b\nc", "->", "d\ne", "->"], [(0, 1, 2), (2, 3, 4)]),
    ],
)
def test_an_answer_ends_after_the_token_of_its_last_character(pieces: list[str], expected: list[tuple[int, ...]]):
    """Demonstration spans from character offsets, where tokens split or merge the answer and the newline."""
    ends = np.cumsum([len(piece) for piece in pieces])
    encoded = Encoded(list(range(len(pieces))), ends - [len(piece) for piece in pieces], ends)
    demo_chars = [(0, 3, 4), (5, 8, 9)]  # (demonstration start, answer start, answer end) in "a->b\nc->d\ne->"
    assert _demonstration_tokens(encoded, demo_chars, query_char=10, shift=1) == [
        tuple(position + 1 for position in span) for span in expected
    ]


def test_zero_shot_queries_are_read_back_through_a_tokenizer_that_adds_a_prefix_space() -> None:
    """A byte-level BPE with ``add_prefix_space=True`` (RoBERTa's) puts a space before the text it encodes, so the
    query of a zero-shot prompt decodes as " Q: ...": it is still its query's input, so the tasks' answers to it are
    known."""
    tokenizer = copy.deepcopy(byte_bpe())
    tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    pool = TextPool(bitwise_text_tasks(ops=("and", "xor"), n_bits=4), tokenizer, template="Q: {x}\nA: {y}", null=False)
    for n_shots in (0, 2):
        batch = pool.sample(n_per_task=6, n_shots=n_shots, seed=0)
        queries = pool.query_inputs(batch)
        assert None not in queries
        spans = zip(batch.query_start.tolist(), batch.answer_pos.tolist(), strict=True)
        for i, (x, (start, end)) in enumerate(zip(queries, spans, strict=True)):
            assert tokenizer.decode(batch.inputs[i, start : end + 1].tolist()).strip() == f"Q: {x}\nA:"
        targets = pool.target_answers(batch, batch.task_names)[batch.task_ids, torch.arange(len(batch)), 0]
        assert torch.equal(targets, batch.answers[:, 0])


def test_no_demonstration_shows_the_query_input_of_a_task_that_lists_an_input_twice() -> None:
    """An input listed twice (the same pair again, or another output) never appears twice in one prompt."""
    tokenizer = byte_bpe()
    examples = (("dog", "cat"), ("big", "small"), ("dog", "cat"), ("big", "tiny"), ("red", "green"), ("old", "young"))
    examples += (("tall", "tiny"),)
    pool = TextPool((TextTask("repeats", examples),), tokenizer)
    batch = pool.sample(60, n_shots=4, seed=0)
    outputs_of_big = set()
    for i in range(len(batch)):
        demos, query, answer = decode(batch, tokenizer, i)
        inputs = [x for x, _, _ in demos] + [query]
        assert len(set(inputs)) == len(inputs) == 5, inputs
        pairs = [(x, y) for x, y, _ in demos] + [(query, answer)]
        assert set(pairs) <= set(examples)
        outputs_of_big |= {y for x, y in pairs if x == "big"}
    assert outputs_of_big == {"small", "tiny"}  # each output of an input listed twice is drawn
    with pytest.raises(TaskError, match=r"needs 6 distinct examples.*'repeats': 5\} have fewer usable inputs"):
        pool.sample(2, n_shots=5, seed=0)


def test_label_noise_reaches_its_share_when_one_output_dominates() -> None:
    """19 of 20 examples answer "good": a wrong label is still drawn for the share of demonstrations asked for."""
    tokenizer = byte_bpe()
    words = LEXICON["noun"]
    right = {x: "bad" if i == 0 else "good" for i, x in enumerate(words)}
    pool = TextPool((TextTask("sentiment", tuple(right.items())),), tokenizer)
    batch = pool.sample(200, n_shots=4, seed=0, label_noise=0.5)
    flags = []
    for i in range(len(batch)):
        demos, _, _ = decode(batch, tokenizer, i)
        assert all(noisy == (y != right[x]) for x, y, noisy in demos)  # the flag says which label is wrong
        flags += [noisy for _, _, noisy in demos]
    share, n = float(np.mean(flags)), len(flags)
    assert abs(share - 0.5) < 4 * (0.25 / n) ** 0.5, share  # within 4 binomial standard errors of the noise asked
    same = TextPool((TextTask("same", tuple((x, "yes") for x in words)),), tokenizer)
    with pytest.raises(TaskError, match=r"every example has the output 'yes', so none would change.*label_noise=0"):
        same.sample(2, n_shots=2, seed=0, label_noise=0.5)


@pytest.mark.parametrize(
    ("make", "template", "tasks"),
    [
        (sentencepiece_like, " {x} {y} ", bitwise_text_tasks(ops=("and", "xor"), n_bits=4, n_examples=24)),
        (
            qwen_like,
            "{x}\t{y}",
            (
                TextTask("plural", tuple((f"{word} ", f"{word}s") for word in LEXICON["noun"])),
                TextTask("prefix", tuple((f"{word} ", word[:2]) for word in LEXICON["noun"])),
            ),
        ),
    ],
    ids=["decoder-drops-the-template's-leading-space", "input-ending-in-a-space"],
)
def test_queries_are_read_back_up_to_whitespace_at_their_ends(make, template: str, tasks) -> None:
    """A SentencePiece decoder drops the space the template starts with; a whitespace token holds an input's trailing
    space with the template's tab: each query is still its input, so the tasks' answers to it are known."""
    pool = TextPool(tasks, make(), template=template, null=False)
    assert pool.dropped == ()
    for n_shots in (0, 2):
        batch = pool.sample(n_per_task=6, n_shots=n_shots, seed=0)
        assert None not in pool.query_inputs(batch)
        targets = pool.target_answers(batch, batch.task_names)[batch.task_ids, torch.arange(len(batch)), 0]
        assert torch.equal(targets, batch.answers[:, 0])
