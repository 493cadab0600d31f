"""Benchmark 6: a GPT-2-small-size model loaded as a user would load one: TD and a patching sweep against TL loops.

The model is a ``GPT2LMHeadModel`` of GPT-2 small's size (12 blocks, d_model 768, 12 heads, 1,024 positions
and GPT-2's vocabulary of 50,257 tokens, so the unembedding costs what it costs on the real model) with random
weights, written with ``save_pretrained`` next to a byte-level BPE tokenizer trained locally
(:func:`tv_lens.models.local_hf.build_tokenizer`; its ids are a subset of the embedding's rows) and booted with
``TransformerBridge.boot_transformers``. The prompts are text ICL prompts of the bitwise tasks (``"01001
11100->01000"`` lines, six operations and Null, about 60 tokens each, answers scored on their first token)
from a :class:`~tv_lens.tasks.TextPool` through that tokenizer. ``--quick`` runs the same code at a reduced
size (4 blocks, d_model 128, a 2,048-token vocabulary, 33 prompts of about 30 tokens) and checks every number.

Rows (each checks that tv_lens and the baseline give equal numbers before it reports a ratio):

1. TD: ``collect`` (every layer's answer-position rows in one pass) + the k-NN of ``TaskDecodability`` (what
   ``run_batch`` runs), against (a) a plain forward pass of the same prompts and (b) the usual way:
   ``run_with_cache`` with a ``names_filter`` for the residual stream, indexing the answer positions, then the
   same k-NN. Target: <= 0.7x the plain pass. The note gives the plain pass stopped after the last block, i.e.
   the part of the plain pass that is not the unembedding. On a CPU, (a) is measured twice: in wall-clock seconds
   at torch's thread count, and in the calling thread's CPU seconds with torch on one thread, which counts the
   work each side does whatever else runs on the machine.
2. Patching sweep: ``TaskVectorPatching.run_batch`` over every (layer, target task) cell, against the loop a user
   writes with TransformerLens hooks: per batch a clean run, then one ``run_with_hooks`` per cell writing the
   target's vector at the answer positions. Target: >= 10x faster, and no more peak memory than the loop.

Both sides run the same batches: tv_lens's ``batch_size`` / ``rows_per_pass`` equals the baselines' prompts per
pass (:func:`benchmarks.common.pass_rows`), and the baselines run length-sorted batches cut at their longest
prompt, so no padding column is computed on either side. The baselines keep only the answer rows of each
pass's logits. At full size one pass per cell over 200 prompts takes minutes on a CPU, so the loop runs
``loop_cells`` of the cells (first, middle and last layer) on every prompt, and its time for all cells is its
clean passes plus the mean time of a cell times the number of cells: every cell is the same full forward pass
over the same prompts, only the hook's layer and vector differ. The quick run times the whole loop and prints
that estimate next to it, as a check of the extrapolation.

Peak memory is measured in a fresh process, on the pass-sized batch of the longest prompts (every batch of
the full run is at most that large, and what the runs keep across batches is a few numbers per prompt): on
CPU the growth of the peak resident set (``VmHWM``, reset before each side) over the loaded model, with
glibc's mmap threshold fixed so that freed tensors go back to the system between sides; on CUDA
``torch.cuda.max_memory_allocated``.

Run alone: ``python -m benchmarks.pretrained [--quick] [--device cuda] [--dtype bfloat16]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from benchmarks.common import QUICK, Row, Scale, in_fresh_processes, machine_lines, pass_rows, peak_mb, print_table
from tv_lens.analyses.decodability import TaskDecodability
from tv_lens.analyses.patching import TaskVectorPatching
from tv_lens.interventions import supports_blocked_keys
from tv_lens.interventions.sweep import start_skips_blocks
from tv_lens.models.local_hf import build_tokenizer
from tv_lens.probes import Representations, collect
from tv_lens.task_vectors import TaskVectors
from tv_lens.tasks import TextPool
from tv_lens.tasks.text_families import bitwise_text_tasks
from tv_lens.tasks.tokens import BITWISE_OPS

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
TD_TARGET = 0.7  # TD time <= 0.7x a plain forward pass
SWEEP_TARGET = 10.0  # patching sweep >= 10x the loop


@dataclass(frozen=True)
class GPT2Scale:
    """Model and prompt sizes of the GPT-2-size rows.

    Attributes:
        n_layers, d_model, n_heads, d_vocab, n_ctx: The ``GPT2Config`` (``n_layer``, ``n_embd``, ``n_head``,
            ``vocab_size``, ``n_positions``).
        ops: Bitwise operations of the task pool (plus the Null task).
        n_per_task: Prompts per task.
        shots: Demonstrations per prompt, an inclusive range.
        loop_cells: Cells of the patching loop that run (``None``: all); the loop's time for every cell is
            extrapolated from them.
        rounds: Interleaved timing rounds; the median counts.
    """

    n_layers: int
    d_model: int
    n_heads: int
    d_vocab: int
    ops: tuple[str, ...]
    n_per_task: int
    shots: tuple[int, int]
    loop_cells: int | None
    rounds: int
    n_ctx: int = 1024

    @property
    def n_prompts(self) -> int:
        return (len(self.ops) + 1) * self.n_per_task


GPT2_FULL = GPT2Scale(12, 768, 12, 50257, BITWISE_OPS, n_per_task=29, shots=(6, 10), loop_cells=3, rounds=3)
GPT2_QUICK = GPT2Scale(4, 128, 4, 2048, ("and", "xor"), n_per_task=11, shots=(3, 5), loop_cells=None, rounds=2)


def gpt2_scale(scale: Scale) -> GPT2Scale:
    """The GPT-2-size rows' scale for a run of the whole benchmark (``--quick`` or not)."""
    return GPT2_QUICK if scale == QUICK else GPT2_FULL


def build_folder(scale: GPT2Scale, folder: Path) -> Path:
    """Write a random-weight ``GPT2LMHeadModel`` of ``scale`` and the local tokenizer with ``save_pretrained``."""
    import transformers

    tokenizer = build_tokenizer()
    if len(tokenizer) > scale.d_vocab:
        raise ValueError(f"the local tokenizer has {len(tokenizer)} tokens, more than d_vocab={scale.d_vocab}")
    config = transformers.GPT2Config(
        n_layer=scale.n_layers,
        n_embd=scale.d_model,
        n_head=scale.n_heads,
        n_positions=scale.n_ctx,
        vocab_size=scale.d_vocab,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        transformers.GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "bench_scale.json").write_text(json.dumps(asdict(scale)), encoding="utf-8")
    return folder


def load_model(folder: Path, device: str, dtype: torch.dtype) -> Any:
    """Boot the folder as a user would: ``TransformerBridge.boot_transformers`` with its tokenizer, eval mode."""
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(folder))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = TransformerBridge.boot_transformers(str(folder), tokenizer=tokenizer, device=device, dtype=dtype)
    return model.eval()


@dataclass(frozen=True)
class Setup:
    """Everything both sides of a row share."""

    scale: GPT2Scale
    model: Any
    batch: Any  # ICLBatch, on the model's device
    size: int  # prompts per pass, both sides
    device: str
    dtype: torch.dtype


def setup(folder: Path, device: str, dtype: torch.dtype) -> Setup:
    """Load the model of ``folder`` and sample the prompts (seed 0); prompts per pass from their mean length."""
    saved = json.loads((folder / "bench_scale.json").read_text(encoding="utf-8"))
    scale = GPT2Scale(**{key: tuple(v) if isinstance(v, list) else v for key, v in saved.items()})
    model = load_model(folder, device, dtype)
    batch = _pool(scale, model.tokenizer).sample(scale.n_per_task, scale.shots, seed=0).to(device)
    size = pass_rows(device, int(batch.attention_mask.sum(1).float().mean()))
    return Setup(scale, model, batch, size, device, dtype)


def _pool(scale: GPT2Scale, tokenizer: Any) -> TextPool:
    """The bitwise text tasks of ``scale`` and Null, answers scored on their first token."""
    tasks = bitwise_text_tasks(scale.ops, n_bits=5)
    return TextPool(tasks, tokenizer, null=True, bos=True, answer_tokens="first")


def task_vectors(s: Setup, folder: Path) -> TaskVectors:
    """Task vectors of every task at every block from a separate sample (seed 1), saved in ``folder``."""
    path = folder / "vectors.tvl"
    if path.exists():
        return TaskVectors.load(path)
    sample = _pool(s.scale, s.model.tokenizer).sample(min(s.scale.n_per_task, 12), s.scale.shots, seed=1)
    vectors = TaskVectors.from_model(s.model, sample.to(s.device), batch_size=s.size)
    vectors.save(path)
    return vectors


def length_batches(s: Setup) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The baselines' batches: prompts sorted by length, ``s.size`` per pass, each cut at its longest prompt.

    Returns (prompt index, tokens) pairs; tokens on the model's device.
    """
    lengths = s.batch.attention_mask.sum(1).cpu()
    batches = []
    for index in torch.argsort(lengths, stable=True).split(s.size):
        width = int(lengths[index].max())
        batches.append((index, s.batch.inputs[index.to(s.batch.inputs.device), :width]))
    return batches


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _tolerance(dtype: torch.dtype) -> dict[str, float]:
    """Tolerance of activations and losses: float rounding of different batch shapes."""
    return {"atol": 1e-4, "rtol": 1e-4} if dtype == torch.float32 else {"atol": 0.1, "rtol": 0.05}


# ----------------------------------------------------------------------------------------------------------------
# Row 1: task decodability


def td_ours(s: Setup, knn: bool = True) -> tuple[Representations, Any]:
    """tv_lens: ``collect`` every layer in one pass per batch, then the k-NN (what ``run_batch`` does)."""
    reps = collect(
        s.model,
        s.batch.inputs,
        s.batch.answer_pos,
        attention_mask=s.batch.attention_mask,
        task_ids=s.batch.task_ids,
        batch_size=s.size,
        progress=False,
    )
    return reps, TaskDecodability(n_bootstrap=0).compute(reps, task_names=s.batch.task_names) if knn else None


def td_floor(s: Setup) -> None:
    """A plain forward pass of the same prompts (logits at every position)."""
    for _, tokens in length_batches(s):
        s.model(tokens)


class _Stop(Exception):
    """Raised by a hook to end a forward pass."""


def td_blocks(s: Setup) -> None:
    """The plain forward pass stopped after the last block (a hook raises there): the floor minus the unembedding."""

    def stop(activation: torch.Tensor, hook: Any) -> None:
        raise _Stop

    with s.model.hooks(fwd_hooks=[(f"blocks.{s.scale.n_layers - 1}.hook_resid_post", stop)]):
        for _, tokens in length_batches(s):
            with contextlib.suppress(_Stop):
                s.model(tokens)


def td_usual(s: Setup, knn: bool = True) -> tuple[torch.Tensor, Any]:
    """``run_with_cache`` of the residual stream, index the answer positions, then the same k-NN."""
    names = ["blocks.0.hook_resid_pre"] + [f"blocks.{layer}.hook_resid_post" for layer in range(s.scale.n_layers)]
    wanted = set(names)
    rows = torch.empty(len(names), len(s.batch), s.scale.d_model)
    for index, tokens in length_batches(s):
        _, cache = s.model.run_with_cache(tokens, names_filter=lambda name: name in wanted)
        at = (torch.arange(len(index), device=tokens.device), s.batch.answer_pos[index.to(tokens.device)])
        for i, name in enumerate(names):
            rows[i, index] = cache[name][at].float().cpu()
        del cache
    reps = Representations(rows, (-1, *range(s.scale.n_layers)), task_ids=s.batch.task_ids.cpu())
    return rows, TaskDecodability(n_bootstrap=0).compute(reps, task_names=s.batch.task_names) if knn else None


def check_td(s: Setup, ours: tuple[Representations, Any], usual: tuple[torch.Tensor, Any]) -> str:
    """Rows equal (to the dtype's tolerance), then TD per layer equal (float32: exactly)."""
    (reps, result), (rows, reference) = ours, usual
    tolerance = _tolerance(s.dtype)
    torch.testing.assert_close(reps.activations, rows, **tolerance)
    gap = float((result.td - reference.td).abs().max())
    allowed = 0.0 if s.dtype == torch.float32 else 0.05
    if gap > allowed:
        raise AssertionError(f"TD differs from run_with_cache's by {gap:.4f} (allowed {allowed})")
    return f"rows checked equal to run_with_cache's ({tolerance['atol']:g}) and TD per layer (gap {gap:.3g}) first"


# ----------------------------------------------------------------------------------------------------------------
# Row 2: patching sweep


def sweep_cells(n_layers: int, n_targets: int, loop_cells: int | None) -> list[tuple[int, int]]:
    """(layer index, target index) cells the loop runs: all, or ``loop_cells`` spread over the layers."""
    cells = [(i, t) for i in range(n_layers) for t in range(n_targets)]
    if loop_cells is None or loop_cells >= len(cells):
        return cells
    layers = sorted({round(j * (n_layers - 1) / max(loop_cells - 1, 1)) for j in range(loop_cells)})
    return [(layer, j % n_targets) for j, layer in enumerate(layers)]


def sweep_ours(s: Setup, vectors: TaskVectors) -> Any:
    """tv_lens: every (layer, target) cell of the sweep, passes of at most ``s.size`` prompts' positions."""
    return TaskVectorPatching(n_bootstrap=0, rows_per_pass=s.size).run_batch(s.model, s.batch, vectors)


@dataclass
class LoopRun:
    """The loop's scores (``[layer, target, prompt]``, NaN for cells it did not run) and its timings."""

    correct: torch.Tensor
    loss: torch.Tensor
    clean_loss: torch.Tensor
    clean_s: float
    cell_s: dict[tuple[int, int], float]

    def estimate(self, n_cells: int, cells: list[tuple[int, int]] | None = None) -> float:
        """Seconds of the loop over ``n_cells`` cells: the clean passes + the mean time of ``cells`` x ``n_cells``."""
        times = [self.cell_s[cell] for cell in (cells or list(self.cell_s))]
        return self.clean_s + statistics.fmean(times) * n_cells


def sweep_loop(s: Setup, vectors: TaskVectors, cells: list[tuple[int, int]]) -> LoopRun:
    """Per length-sorted batch: a clean run, then one ``run_with_hooks`` per (layer, target) cell."""
    n_layers, n_targets, n = len(vectors.layers), len(vectors.task_names), len(s.batch)
    correct = torch.full((n_layers, n_targets, n), float("nan"))
    loss = torch.full((n_layers, n_targets, n), float("nan"))
    clean_loss = torch.full((n,), float("nan"))
    clean_s, cell_s = 0.0, dict.fromkeys(cells, 0.0)
    device = s.batch.inputs.device
    for index, tokens in length_batches(s):
        positions = s.batch.answer_pos[index.to(device)]
        targets = s.batch.answers[index.to(device), 0]
        rows = torch.arange(len(index), device=device)
        start = time.perf_counter()
        clean = s.model(tokens)[rows, positions].float()  # only the answer rows outlive the pass
        clean_loss[index] = F.cross_entropy(clean, targets, reduction="none").cpu()
        _sync(s.device)
        clean_s += time.perf_counter() - start
        for i, t in cells:
            start = time.perf_counter()
            vector = vectors.vectors[t, i].to(device, s.dtype)

            def hook(activation, hook, vector=vector, rows=rows, positions=positions):
                activation[rows, positions] = vector
                return activation

            name = f"blocks.{vectors.layers[i]}.hook_resid_post"
            at_answer = s.model.run_with_hooks(tokens, fwd_hooks=[(name, hook)])[rows, positions].float()
            correct[i, t, index] = (at_answer.argmax(-1) == targets).float().cpu()
            loss[i, t, index] = F.cross_entropy(at_answer, targets, reduction="none").cpu()
            _sync(s.device)
            cell_s[(i, t)] += time.perf_counter() - start
    return LoopRun(correct, loss, clean_loss, clean_s, cell_s)


def check_sweep(s: Setup, ours: Any, loop: LoopRun, cells: list[tuple[int, int]]) -> str:
    """Per-prompt loss of every cell the loop ran, per-cell mean loss and accuracy, and the clean loss."""
    layers, targets = torch.tensor([c[0] for c in cells]), torch.tensor([c[1] for c in cells])
    exact = s.dtype == torch.float32
    mine, theirs = ours.loss.float()[layers, targets], loop.loss[layers, targets]
    torch.testing.assert_close(mine, theirs, atol=1e-4 if exact else 0.1, rtol=1e-5 if exact else 0.05)
    torch.testing.assert_close(mine.mean(-1), theirs.mean(-1), atol=1e-5 if exact else 0.02, rtol=0)
    torch.testing.assert_close(
        ours.clean_loss.float(), loop.clean_loss, atol=1e-5 if exact else 0.1, rtol=1e-5 if exact else 0.05
    )
    accuracy = ours.correct.float()[layers, targets].mean(-1)
    gap = float((accuracy - loop.correct[layers, targets].mean(-1)).abs().max())
    allowed = 1e-6 if exact else 0.05
    if gap > allowed:
        raise AssertionError(f"per-cell accuracy differs from the loop's by {gap:.4f} (allowed {allowed})")
    n_cells = ours.loss.shape[0] * ours.loss.shape[1]
    which = "every cell" if len(cells) == n_cells else f"the {len(cells)} cells the loop ran"
    return f"per-prompt loss, per-cell accuracy ({which}) and clean loss checked equal first"


# ----------------------------------------------------------------------------------------------------------------
# Peak memory


def measure_memory(folder: str, device: str, dtype_name: str, threads: str) -> dict[str, dict[str, float | None]]:
    """Peak memory of every side of both rows, on the pass-sized batch of the longest prompts.

    Run it in a fresh process (:func:`memory_in_fresh_process`): each measurement resets the peak first, so the
    sides do not see each other's peaks, and freed tensors go back to the system between them. The TD sides
    stop before their k-NN, which needs more prompts per task than one batch holds (its memory, a distance
    matrix over the prompts, is the same on both sides).
    """
    torch.set_num_threads(int(threads))
    s = setup(Path(folder), device, DTYPES[dtype_name])
    longest = torch.argsort(s.batch.attention_mask.sum(1).cpu(), descending=True, stable=True)[: s.size]
    s = replace(s, batch=s.batch.select(longest.to(s.batch.inputs.device)))
    vectors = task_vectors(s, Path(folder))
    cells = sweep_cells(len(vectors.layers), len(vectors.task_names), 2)  # every pass of the loop is alike
    with torch.no_grad():
        s.model(s.batch.inputs[:1, :4])  # the model's lazy set-up, outside every measurement
        supports_blocked_keys(s.model), start_skips_blocks(s.model)  # detected once per model, outside too
        return {
            "td": {
                "tv_lens": peak_mb(lambda: td_ours(s, knn=False), device),
                "floor": peak_mb(lambda: td_floor(s), device),
                "usual": peak_mb(lambda: td_usual(s, knn=False), device),
            },
            "sweep": {
                "tv_lens": peak_mb(lambda: sweep_ours(s, vectors), device),
                "loop": peak_mb(lambda: sweep_loop(s, vectors, cells), device),
            },
        }


def memory_in_fresh_process(folder: Path, device: str, dtype_name: str) -> dict[str, dict[str, float | None]]:
    """:func:`measure_memory` in a new Python process, with glibc's mmap threshold fixed at 128 KiB."""
    code = (
        "import json, sys; from benchmarks.pretrained import measure_memory; "
        "print(json.dumps(measure_memory(*sys.argv[1:])))"
    )
    args = [str(folder), device, dtype_name, str(torch.get_num_threads())]
    env = {"MALLOC_MMAP_THRESHOLD_": "131072", "HF_HUB_OFFLINE": "1"}
    result: dict[str, dict[str, float | None]] = in_fresh_processes(
        code, {"GPT-2 size": args}, "the peak memory of the GPT-2-size rows", env
    )["GPT-2 size"]
    return result


class _Clock:
    """Seconds inside the model's forward calls and inside its unembedding, per kind of call, via module hooks.

    Calls on the prompts' tokens are plain or clean passes. Calls on a residual-stream input are tv_lens's passes
    from the clean residual, and so are calls on all-zero tokens: where a model's ``start_at_layer`` does not
    work, tv_lens runs zero tokens and overwrites the residual entering the start block (the prompts start with
    the BOS token, never token 0).
    """

    KINDS: ClassVar[dict[str, str]] = {"tokens": "passes on the prompts", "residual": "passes from the clean residual"}

    def __init__(self, model: Any, device: str) -> None:
        self.device = device
        self.seconds = {kind: 0.0 for kind in self.KINDS}
        self.unembed = {kind: 0.0 for kind in self.KINDS}
        self.positions = {kind: 0 for kind in self.KINDS}
        self._kind = "tokens"
        self._started = {"forward": 0.0, "unembed": 0.0}
        self._handles = [
            model.register_forward_pre_hook(self._begin_forward),
            model.register_forward_hook(lambda module, args, out: self._end("forward"), always_call=True),
            model.unembed.register_forward_pre_hook(lambda module, args: self._begin("unembed")),
            model.unembed.register_forward_hook(lambda module, args, out: self._end("unembed"), always_call=True),
        ]

    def _begin(self, slot: str) -> None:
        _sync(self.device)
        self._started[slot] = time.perf_counter()

    def _end(self, slot: str) -> None:
        _sync(self.device)
        seconds = time.perf_counter() - self._started[slot]
        (self.seconds if slot == "forward" else self.unembed)[self._kind] += seconds

    def _begin_forward(self, module: Any, args: tuple[Any, ...]) -> None:
        inputs = args[0]
        self._kind = "residual" if inputs.is_floating_point() or not bool(inputs.any()) else "tokens"
        self.positions[self._kind] += int(inputs.shape[0] * inputs.shape[1])
        self._begin("forward")

    def describe(self, total: float) -> str:
        parts = [
            f"{label} {self.seconds[kind]:.2f} s over {self.positions[kind]} positions (unembedding "
            f"{self.unembed[kind]:.2f} s)"
            for kind, label in self.KINDS.items()
            if self.positions[kind]
        ]
        return f"{total:.2f} s = {' + '.join(parts)} + outside the model {total - sum(self.seconds.values()):.2f} s"

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def profile_lines(folder: Path, device: str, dtype_name: str) -> list[str]:
    """Where the time of tv_lens's sides and of the plain pass goes (one run of each over every prompt)."""
    s = setup(folder, device, DTYPES[dtype_name])
    vectors = task_vectors(s, folder)
    lines = [f"where the time goes ({len(s.batch)} prompts; module hooks time the model's forward and unembedding):"]
    sides = {
        "plain forward pass": lambda: td_floor(s),
        "TD, tv_lens": lambda: td_ours(s),
        "patching sweep, tv_lens": lambda: sweep_ours(s, vectors),
    }
    with torch.no_grad():
        s.model(s.batch.inputs[:1, :4])
        supports_blocked_keys(s.model), start_skips_blocks(s.model)
        for name, fn in sides.items():
            clock = _Clock(s.model, device)
            try:
                total, _ = _timed(fn, device)
            finally:
                clock.remove()
            lines.append(f"  {name}: {clock.describe(total)}")
    cells = len(vectors.layers) * len(vectors.task_names)
    loop_positions = (1 + cells) * int(s.batch.attention_mask.sum())
    lines.append(f"  the loop runs {1 + cells} full passes over {loop_positions} positions in all")
    return lines


def _mb(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f} MB"


# ----------------------------------------------------------------------------------------------------------------
# The rows


def _timed(fn: Callable[[], Any], device: str) -> tuple[float, Any]:
    _sync(device)
    start = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - start, out


def one_thread_cpu_seconds(sides: dict[str, Callable[[], Any]], rounds: int) -> dict[str, float]:
    """Median CPU seconds of each side over interleaved ``rounds``, torch on one thread (the calling one).

    The calling thread's CPU time counts the work a side does, not the time other jobs on the machine take
    from it, so these ratios hold still where the wall-clock ones move with the load.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        seconds: dict[str, list[float]] = {key: [] for key in sides}
        for _ in range(rounds):
            for key, fn in sides.items():
                start = time.thread_time()
                fn()
                seconds[key].append(time.thread_time() - start)
    finally:
        torch.set_num_threads(threads)
    return {key: statistics.median(values) for key, values in seconds.items()}


def pretrained_rows(
    scale: Scale | GPT2Scale, device: str, dtype_name: str = "float32", say: Callable[[str], None] = print
) -> list[Row]:
    """The GPT-2-size rows of the table; the setting, peak memory and each round's timings go to ``say`` first."""
    gpt2 = scale if isinstance(scale, GPT2Scale) else gpt2_scale(scale)
    with tempfile.TemporaryDirectory(prefix="tv-lens-gpt2-bench-") as tmp:
        folder = build_folder(gpt2, Path(tmp))
        s = setup(folder, device, DTYPES[dtype_name])
        with torch.no_grad():
            vectors = task_vectors(s, folder)
        lengths = s.batch.attention_mask.sum(1).float()
        say(
            f"model: {type(s.model).__name__}.boot_transformers of a random-weight GPT2LMHeadModel "
            f"({gpt2.n_layers} blocks, d_model {gpt2.d_model}, {gpt2.n_heads} heads, vocab {gpt2.d_vocab}, "
            f"n_ctx {gpt2.n_ctx}), {dtype_name}; local tokenizer of {len(s.model.tokenizer)} tokens"
        )
        say(
            f"prompts: {len(s.batch)} bitwise-task text prompts ({len(s.batch.task_names)} tasks with Null), "
            f"{lengths.mean():.1f} tokens on average ({int(lengths.min())}-{int(lengths.max())}); "
            f"{s.size} prompts per pass on both sides"
        )
        for line in _memory_lines(folder, device, dtype_name, quick=gpt2 == GPT2_QUICK):
            say(line)
        with torch.no_grad():
            return _rows(s, vectors, say)


def _rows(s: Setup, vectors: TaskVectors, say: Callable[[str], None]) -> list[Row]:
    scale, n = s.scale, len(s.batch)
    n_layers, n_targets = len(vectors.layers), len(vectors.task_names)
    n_cells = n_layers * n_targets
    cells = sweep_cells(n_layers, n_targets, scale.loop_cells)
    sides: dict[str, Callable[[], Any]] = {
        "td": lambda: td_ours(s),
        "floor": lambda: td_floor(s),
        "blocks": lambda: td_blocks(s),
        "usual": lambda: td_usual(s),
        "sweep": lambda: sweep_ours(s, vectors),
        "loop": lambda: sweep_loop(s, vectors, cells),
    }
    times: dict[str, list[float]] = {key: [] for key in [*sides, "check"]}
    first: dict[str, Any] = {}
    for round_ in range(scale.rounds):  # interleaved, so that a change of load hits every side alike
        for key, fn in sides.items():
            seconds, out = _timed(fn, s.device)
            first.setdefault(key, out)
            if key != "loop":
                times[key].append(seconds)
            elif len(cells) < n_cells:  # the loop over every cell, from the cells that ran
                times[key].append(out.estimate(n_cells))
            else:  # the whole loop ran: also what extrapolating from 3 of its cells would have said
                times[key].append(seconds)
                times["check"].append(out.estimate(n_cells, sweep_cells(n_layers, n_targets, 3)))
        say(f"round {round_ + 1}: " + ", ".join(f"{key} {values[-1]:.2f} s" for key, values in times.items() if values))
    td_check = check_td(s, first["td"], first["usual"])
    sweep_check = check_sweep(s, first["sweep"], first["loop"], cells)
    t = {key: statistics.median(values) for key, values in times.items() if values}
    rounds = f"median of {scale.rounds} interleaved rounds"
    size = f"{scale.n_layers} blocks, d {scale.d_model}, vocab {scale.d_vocab}"
    td_label = f"GPT-2-size TD ({size}), {scale.n_layers + 1} layers x {n} prompts"
    td_note = (
        f"{td_check}; k-NN included (no bootstrap); the plain pass stopped after the last block takes "
        f"{t['blocks']:.3f} s ({t['blocks'] / t['floor']:.2f}x: the unembedding is the other "
        f"{1 - t['blocks'] / t['floor']:.0%}); {rounds}"
    )
    how = (
        "every cell's answer copy shares the prompt's prefix (attention masked through hooks)"
        if supports_blocked_keys(s.model)
        else "cells stacked on the batch dimension"
    )
    if len(cells) < n_cells:
        layers = sorted({vectors.layers[i] for i, _ in cells})
        loop_how = (
            f"the loop ran {len(cells)} of the {n_cells} cells (layers {layers}) on every prompt; its time is the "
            f"clean passes + the mean cell time x {n_cells} (every cell is the same pass)"
        )
    else:
        loop_how = (
            f"the whole loop was timed ({t['loop']:.2f} s; extrapolating from 3 of its cells, as the full size "
            f"does, gives {t['check']:.2f} s)"
        )
    rows = [
        Row(
            td_label,
            t["td"],
            t["floor"],
            "plain forward pass, same prompts and batches",
            f"<= {TD_TARGET}",
            t["td"] <= TD_TARGET * t["floor"],
            td_note,
        ),
        Row(
            td_label,
            t["td"],
            t["usual"],
            "run_with_cache(names_filter) + index + same k-NN",
            "< 1",
            t["td"] < t["usual"],
        ),
        Row(
            f"GPT-2-size patching sweep, {n_cells} cells x {n} prompts",
            t["sweep"],
            t["loop"],
            "clean run + run_with_hooks per (layer, target) cell",
            f"<= {1 / SWEEP_TARGET:.2f}",
            t["loop"] >= SWEEP_TARGET * t["sweep"],
            f"{sweep_check}; tv_lens: {how}; {loop_how}; {rounds}",
        ),
    ]
    if not s.device.startswith("cuda"):
        cpu = one_thread_cpu_seconds({key: sides[key] for key in ("td", "floor", "blocks")}, scale.rounds)
        rows.insert(
            1,
            Row(
                f"{td_label}, CPU time on one thread",
                cpu["td"],
                cpu["floor"],
                "plain forward pass, same prompts and batches",
                f"<= {TD_TARGET}",
                cpu["td"] <= TD_TARGET * cpu["floor"],
                f"the calling thread's CPU time with torch on one thread (the work done, whatever the load); the "
                f"plain pass stopped after the last block {cpu['blocks'] / cpu['floor']:.2f}x; median of "
                f"{scale.rounds} interleaved rounds",
            ),
        )
    return rows


def _memory_lines(folder: Path, device: str, dtype_name: str, quick: bool) -> list[str]:
    memory = memory_in_fresh_process(folder, device, dtype_name)
    td, sweep = memory["td"], memory["sweep"]
    what = "allocated (CUDA)" if device.startswith("cuda") else "resident-set growth over the loaded model"
    lines = [
        f"peak memory ({what}; fresh process, on the pass-sized batch of the longest prompts):",
        f"  TD: tv_lens {_mb(td['tv_lens'])}, plain forward pass {_mb(td['floor'])}, "
        f"run_with_cache + index {_mb(td['usual'])}",
        f"  patching sweep: tv_lens {_mb(sweep['tv_lens'])}, run_with_hooks loop {_mb(sweep['loop'])}",
    ]
    if sweep["tv_lens"] is not None and sweep["loop"] is not None:
        ratio = sweep["tv_lens"] / sweep["loop"]
        # At the quick size the model is small next to the process, so the ratio measures nothing.
        passed = "pass" if sweep["tv_lens"] <= sweep["loop"] else "FAIL"
        verdict = "- (not a target in quick mode)" if quick else passed
        lines.append(f"  patching sweep peak memory {ratio:.2f}x the loop's (target <= 1) -> {verdict}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="4 blocks, d_model 128, 48 prompts (seconds)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES), help="model dtype")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument(
        "--profile", action="store_true", help="instead of the rows: where the time of one run of each side goes"
    )
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device} was requested but torch sees no CUDA device.")
    started = time.perf_counter()
    for line in machine_lines(args.device):
        print(line)
    scale = GPT2_QUICK if args.quick else GPT2_FULL
    print(f"scale: {scale}, dtype {args.dtype}", flush=True)
    if args.profile:
        with tempfile.TemporaryDirectory(prefix="tv-lens-gpt2-bench-") as tmp:
            folder = build_folder(scale, Path(tmp))
            with torch.no_grad():
                task_vectors(setup(folder, args.device, DTYPES[args.dtype]), folder)
            for line in profile_lines(folder, args.device, args.dtype):
                print(line)
        return
    rows = pretrained_rows(scale, args.device, args.dtype, say=lambda line: print(line, flush=True))
    print()
    print_table(rows)
    print(f"\nran in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
