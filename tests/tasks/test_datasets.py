"""Loaders of the two public JSON layouts of ICL task datasets, read from the shared sample files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from text_tokenizers import byte_bpe, word_level

from tv_lens.errors import TaskError
from tv_lens.tasks import NULL_TASK, TextPool, load_examples, load_task, load_tasks

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "datasets"
DICT_FILE = SHARED / "dict-format" / "antonyms.json"
RECORDS_FILE = SHARED / "records-format" / "antonym.json"
needs_samples = pytest.mark.skipif(
    not (DICT_FILE.is_file() and RECORDS_FILE.is_file()),
    reason="the sample task files (../shared/datasets/ next to the repository) are not available here",
)


@needs_samples
def test_dict_and_records_formats_load() -> None:
    raw_dict = json.loads(DICT_FILE.read_text())
    raw_records = json.loads(RECORDS_FILE.read_text())
    pairs = load_examples(DICT_FILE)
    assert pairs == tuple(raw_dict.items()) and pairs[0] == ("high", "low")
    records = load_examples(RECORDS_FILE)
    assert records == tuple((r["input"], r["output"]) for r in raw_records)
    assert ("ignore", "pay attention") in records  # multi-word outputs survive
    tasks = load_tasks([DICT_FILE, RECORDS_FILE])
    assert [t.name for t in tasks] == ["antonyms", "antonym"] and tasks[1].examples == records
    assert load_task(DICT_FILE, name="opposites").name == "opposites"


@needs_samples
def test_dataset_prompts_follow_their_files() -> None:
    tokenizer = byte_bpe()
    tasks = load_tasks([DICT_FILE, RECORDS_FILE])
    lookup = [dict(t.examples) for t in tasks]
    pool = TextPool(tasks, tokenizer, template="{x} -> {y}", null=True)
    assert pool.dropped == ()  # a byte-level tokenizer represents any text
    batch = pool.sample(n_per_task=15, n_shots=(0, 4), seed=0)
    n_multi = n_space_token = 0
    for i in range(len(batch)):
        ids = batch.inputs[i, : int(batch.lengths[i])].tolist()
        ap, qs = int(batch.answer_pos[i]), int(batch.query_start[i])
        query = tokenizer.decode(ids[qs : ap + 1])
        answer = tokenizer.decode(batch.answers[i, : int(batch.answer_lengths[i])].tolist())
        # The template's space moves to the answer, unless the tokenizer gives it a token of its own: that token
        # stays with the query, whose last token then predicts the answer's first character.
        assert query + answer == query.rstrip() + " " + answer.lstrip() and query.rstrip().endswith(" ->")
        assert tokenizer.decode(batch.answers[i, :1].tolist()).strip() != ""
        n_space_token += query.endswith(" ")
        n_multi += int(batch.answer_lengths[i]) > 1
        tid = int(batch.task_ids[i])
        if batch.task_names[tid] != NULL_TASK:
            assert lookup[tid][query.rstrip().removesuffix(" ->")] == answer.lstrip()
    assert n_multi > 0 and 0 < n_space_token < len(batch)


@needs_samples
def test_words_the_tokenizer_lacks_are_dropped_or_raise() -> None:
    pairs = load_examples(DICT_FILE)
    known = tuple(f"{x} {y}" for x, y in pairs[: len(pairs) // 2])
    tokenizer = word_level(extra=known)
    pool = TextPool((load_task(DICT_FILE),), tokenizer)
    kept = set(pool.examples[0])
    assert set(pairs[: len(pairs) // 2]) <= kept and len(pool.dropped) > 0
    assert all(reason == "unknown token" for *_, reason in pool.dropped)
    assert len(kept) + len(pool.dropped) == len(pairs)
    with pytest.raises(TaskError, match=r"Task 'antonyms'.*cannot represent example.*unknown token"):
        TextPool((load_task(DICT_FILE),), tokenizer, filter_examples=False)
    every_word = tuple(sorted({w for x, y in pairs for w in f"{x} {y}".split()}))
    with pytest.raises(TaskError, match="can represent none"):
        TextPool((load_task(DICT_FILE),), word_level(drop=every_word))


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("42", "holds a JSON int"),
        ('["hot", "cold"]', "record 0 is 'hot', not an object with 'input' and 'output'"),
        ('[{"input": "hot", "target": "cold"}]', "record 0 .* not an object with 'input' and 'output'"),
        ('{"hot": ["cold", "chilly"]}', "non-empty strings"),
        ('{"hot": ""}', "non-empty strings"),
        ('{"input": "hot", "output": "cold"}', r"one record, which the dict format would read as the examples"),
        ('{"input": ["hot", "big"], "output": ["cold", "small"]}', r"columns of inputs and outputs"),
        ('{"train": [{"input": "hot", "output": "cold"}], "test": []}', r"one JSON object of lists of objects"),
        ('{"antonyms": {"hot": "cold"}}', r"one JSON object of objects \('antonyms': \.\.\.\), not an input -> output"),
        ("{}", "holds no example"),
        ("[]", "holds no example"),
        ('{"hot": "cold",', "is not valid JSON"),
    ],
)
def test_files_of_neither_format_are_rejected(tmp_path: Path, content: str, match: str) -> None:
    path = tmp_path / "task.json"
    path.write_text(content)
    with pytest.raises(TaskError, match=match) as info:
        load_examples(path)
    assert "input" in str(info.value)  # every message shows the two accepted layouts or the record's keys


@pytest.mark.parametrize(
    "content",
    ['{"seven": 7}', '[{"input": 1, "output": "one"}]', '{"hot": ["cold", "chilly"]}', '{"hot": null}', '{" ": "x"}'],
)
def test_values_that_are_not_non_empty_strings_name_the_fix(tmp_path: Path, content: str) -> None:
    path = tmp_path / "task.json"
    path.write_text(content)
    with pytest.raises(
        TaskError, match=r"must be non-empty strings, got .*Write numbers and other values as JSON strings"
    ):
        load_examples(path)


def test_a_dict_file_of_many_inputs_loads_in_linear_time(tmp_path: Path) -> None:
    """300 000 inputs: the check for a key given twice looks at each key once (pairwise: hours, not a second)."""
    n = 300_000
    path = tmp_path / "lexicon.json"
    path.write_text(json.dumps({f"word{i}": f"mot{i}" for i in range(n)}))
    code = (
        "import sys; from tv_lens.tasks import load_examples; "
        "pairs = load_examples(sys.argv[1]); print(len(pairs), pairs[-1][0])"
    )
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120, cwd=root, check=True
    )
    assert done.stdout.split() == [str(n), f"word{n - 1}"]
    path.write_text(json.dumps({f"word{i}": f"mot{i}" for i in range(n)})[:-1] + ', "word7": "again"}')
    with pytest.raises(TaskError, match=r"the key 'word7' appears more than once"):
        load_examples(path)


def test_thousands_of_task_names_and_files_are_checked_in_linear_time() -> None:
    """200 000 task names or task files, one name given twice at the end: found in one pass (pairwise: hours)."""
    code = (
        "from tv_lens.errors import TaskError; from tv_lens.tasks import load_tasks; "
        "from tv_lens.tasks.pool_checks import check_task_names\n"
        "names = [f'task{i}' for i in range(200_000)]\n"
        "check_task_names(names)\n"
        "for call in (lambda: check_task_names(names + ['task5']), "
        "lambda: load_tasks([f'{name}.json' for name in names] + ['elsewhere/task5.json'])):\n"
        "    try:\n        call()\n    except TaskError as error:\n        print(str(error)[:90])\n"
    )
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=root, check=True
    )
    first, second = done.stdout.splitlines()
    assert first.startswith("Task names must be unique, got ['task5'] more than once")
    assert second.startswith("load_tasks: task5.json and elsewhere/task5.json would both be named 'task5'")
