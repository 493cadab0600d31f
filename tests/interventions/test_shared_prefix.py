"""Runs that share a prompt's prefix: blocked attention keys, residual inputs, and sweeps packed that way."""

from __future__ import annotations

import pytest
import torch
from conftest import hook_snapshot, left_padded, ragged_prompts

import tv_lens.interventions.masking as masking
import tv_lens.interventions.sweep as stacking
from tv_lens.errors import LayerOutOfRangeError, ModelNotSupportedError, PositionError, ShapeError
from tv_lens.interventions import (
    BlockedKeysPrecisionError,
    WindowedRowError,
    ablate_head,
    add,
    knockout,
    knockout_strategy,
    masking_strategy,
    replace,
    run_with_interventions,
    supports_blocked_keys,
)
from tv_lens.interventions.sweep import Cell, align, run_sweep, start_skips_blocks
from tv_lens.models import adapt, hooked_transformer_available
from tv_lens.models.running import forward


def embedded(model, tokens):
    """Reference residual entering block 0 (token + position embedding), from TransformerLens's own cache."""
    _, cache = model.run_with_cache(tokens, names_filter=lambda name: name == "blocks.0.hook_resid_pre")
    return cache["blocks.0.hook_resid_pre"]


def test_two_continuations_of_one_prefix_share_a_row(model):
    generator = torch.Generator().manual_seed(0)
    first = torch.randint(1, 24, (5, 8), generator=generator)
    second = first.clone()
    second[:, 6:] = torch.randint(1, 24, (5, 2), generator=generator)
    packed = torch.cat([embedded(model, first), embedded(model, second)[:, 6:]], dim=1)  # prefix, cont. 1, cont. 2
    blocked = torch.zeros(5, 10, 10, dtype=torch.bool)
    blocked[:, 8:, 6:8] = True  # the second continuation may not see the first
    if not supports_blocked_keys(model):
        assert type(model).__name__ != "HookedTransformer"
        with pytest.raises(ModelNotSupportedError, match="cannot be masked through its hook points"):
            run_with_interventions(model, packed, 6, [], n_answer_tokens=4, residual_layer=0, blocked_keys=blocked)
        return
    run = run_with_interventions(model, packed, 6, [], n_answer_tokens=4, residual_layer=0, blocked_keys=blocked)
    torch.testing.assert_close(run.logits[:, :2], model(first)[:, 6:8], atol=1e-6, rtol=0)
    torch.testing.assert_close(run.logits[:, 2:], model(second)[:, 6:8], atol=1e-6, rtol=0)
    unmasked = run_with_interventions(model, packed, 6, [], n_answer_tokens=4, residual_layer=0)
    assert (unmasked.logits[:, 2:] - model(second)[:, 6:8]).abs().max() > 1e-3  # the mask is what makes it equal


def test_hooked_transformers_are_masked_exactly_before_the_softmax(model):
    strategy = masking_strategy(adapt(model))
    if type(model).__name__ == "HookedTransformer":
        assert strategy == "scores"
    else:
        assert strategy in ("pattern", None)


def test_a_run_can_start_from_a_residual(model):
    tokens, answer_pos, _ = ragged_prompts(seed=8)
    vectors = torch.randn(len(tokens), 32, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    interventions = [replace(2, vectors), ablate_head(1, 3)]
    full = run_with_interventions(model, tokens, answer_pos, interventions)
    resumed = run_with_interventions(
        model, model(tokens, stop_at_layer=1), answer_pos, interventions, residual_layer=1, batch_size=3
    )
    torch.testing.assert_close(resumed.logits, full.logits, atol=1e-6, rtol=0)
    assert resumed.writes == full.writes == (len(tokens), len(tokens))


def test_bad_shared_prefix_runs_name_the_problem(model):
    tokens, answer_pos, lengths = ragged_prompts(seed=9)
    residual = model(tokens, stop_at_layer=1)
    with pytest.raises(LayerOutOfRangeError, match="writes before block 1, where the residual inputs enter"):
        run_with_interventions(model, residual, answer_pos, [add(0, torch.zeros(32))], residual_layer=1)
    with pytest.raises(ShapeError, match=r"residual_layer .* or clean_residual, not both"):
        run_with_interventions(
            model, residual, answer_pos, [], residual_layer=1, clean_residual=residual, clean_residual_layer=1
        )
    with pytest.raises(ShapeError, match=r"blocked_keys must be a bool tensor \[batch=7, pos=16, pos=16\]"):
        run_with_interventions(model, tokens, answer_pos, [], blocked_keys=torch.zeros(7, 16, 15, dtype=torch.bool))
    with pytest.raises(ShapeError, match=r"blocked_keys must be a bool tensor \[batch=7, pos=16, pos=16\], got 'x'"):
        run_with_interventions(model, tokens, answer_pos, [], blocked_keys="x")  # was a TypeError
    left, mask, left_pos = left_padded(tokens, lengths)
    with pytest.raises(ShapeError, match="right-pad them instead of left-padding"):
        run_with_interventions(
            model, left, left_pos, [], attention_mask=mask, blocked_keys=torch.zeros(7, 16, 16, dtype=torch.bool)
        )


@pytest.mark.parametrize("rows_per_pass", [512, 2])
def test_a_sweep_names_a_bad_prompt_by_its_index_in_the_whole_input_before_any_pass(model, monkeypatch, rows_per_pass):
    """Passes hold some prompts (and copies of them): the check runs once on all of them, before the first pass."""
    tokens, answer_pos, _ = ragged_prompts(seed=3)
    prompts = align(model, tokens, answer_pos)
    positions = prompts.answer_pos.clone()
    positions[5] += 1  # after prompt 5's answer position
    passes = []
    monkeypatch.setattr(stacking, "clean_pass", lambda *args: passes.append(1))
    score = lambda logits, index: logits[:, 0]  # noqa: E731
    with pytest.raises(
        PositionError, match=r"writes at position \d+ of prompt 5, which is outside the prompt or after"
    ):
        run_sweep(model, prompts, [Cell((add(1, torch.zeros(32), pos=positions),))], score, rows_per_pass=rows_per_pass)
    keys = torch.zeros(len(prompts), prompts.inputs.shape[1], dtype=torch.bool)
    if knockout_strategy(adapt(model)) is not None:  # none on TransformerLens 3.9's bridge
        with pytest.raises(PositionError, match=r"of prompt 5, which is outside the prompt or after"):
            run_sweep(model, prompts, [Cell((knockout(0, keys, pos=positions),))], score, rows_per_pass=rows_per_pass)
    with pytest.raises(
        ShapeError, match=r"add\(layer 1.*cell interventions apply to every prompt; build them with rows=None"
    ):
        run_sweep(model, prompts, [Cell((add(1, torch.zeros(32), rows=[6]),))], score, rows_per_pass=rows_per_pass)
    assert not passes


def test_passes_started_at_a_block_skip_the_blocks_below(model):
    """tv_lens's own start (block skipping) runs no block below it, on every backend, and equals the full pass."""
    tokens, _, _ = ragged_prompts()
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
    calls = []
    hook_point = model.hook_dict["blocks.0.hook_resid_post"]
    hook_point.add_hook(lambda activation, hook: calls.append(1))
    try:
        started = forward(adapt(model), cache["blocks.2.hook_resid_pre"], start_at_layer=2)
    finally:
        hook_point.remove_hooks("fwd")
    assert calls == [] and start_skips_blocks(model)
    torch.testing.assert_close(started, model(tokens), atol=1e-9, rtol=1e-9)


def sweep_cells(tokens, answer_pos):
    """Cells writing at the answer position, at the teacher-forced position after it, and everywhere."""
    generator = torch.Generator().manual_seed(4)
    vectors = torch.randn(4, len(tokens), 32, generator=generator, dtype=torch.float64)
    return [
        Cell((replace(0, vectors[0], pos="answer"),)),
        Cell((add(1, vectors[1], pos="answer"), add(2, vectors[2][0], pos=answer_pos + 1))),
        Cell((ablate_head(2, 1),)),  # every position: never shares a row
        Cell((replace(-1, vectors[3], pos="answer", site="resid_pre"),)),
        Cell(()),
    ]


def reference(model, tokens, answer_pos, cell):
    """The cell's logits at the two read positions, from TransformerLens run_with_hooks per intervention."""
    rows = torch.arange(len(tokens))
    hooks = []
    for intervention in cell.interventions:
        name = adapt(model).hook_name(intervention.site, intervention.layer)
        positions = answer_pos if intervention.pos == "answer" else intervention.pos

        def hook(activation, hook, i=intervention, positions=positions):
            activation = activation.clone()
            if i.kind == "ablate_head":
                activation[:, :, i.head] = 0.0
            elif i.kind == "replace":
                activation[rows, positions] = i.values
            else:
                activation[rows, positions] += i.values
            return activation

        hooks.append((name, hook))
    logits = model.run_with_hooks(tokens, fwd_hooks=hooks)
    return logits[rows[:, None], answer_pos[:, None] + torch.arange(2)]


def test_sweeps_share_prefixes_where_they_can_and_match_separate_runs(model, monkeypatch):
    tokens, lengths, _ = ragged_prompts(seed=10)
    answer_pos = lengths - 2  # two answer tokens, teacher-forced
    prompts = align(model, tokens, answer_pos, n_answer_tokens=2)
    cells = sweep_cells(tokens, answer_pos)

    def score(logits, index):
        return logits.flatten(1).cpu()

    shared = run_sweep(model, prompts, cells, score, rows_per_pass=5)
    for c, cell in enumerate(cells):
        expected = reference(model, tokens, answer_pos, cell).flatten(1)
        torch.testing.assert_close(shared.cells[c], expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(
        shared.clean,
        model(tokens)[torch.arange(7)[:, None], answer_pos[:, None] + torch.arange(2)].flatten(1),
        atol=1e-6,
        rtol=0,
    )
    assert shared.writes == ((7,), (7, 7), (7,), (7,), ())
    monkeypatch.setattr(stacking, "supports_blocked_keys", lambda model: False)
    stacked = run_sweep(model, prompts, cells, score, rows_per_pass=5)
    torch.testing.assert_close(stacked.cells, shared.cells, atol=1e-6, rtol=0)
    if supports_blocked_keys(model):
        assert shared.n_passes < stacked.n_passes


def test_a_shorter_answer_repeats_its_last_column_in_shared_rows_as_in_separate_runs(model, monkeypatch):
    """A prompt with fewer answer tokens than the sweep's longest gets its last column repeated (``score`` sees it),
    whether its cells share the prompt's prefix or run on rows of their own."""
    tokens, lengths, _ = ragged_prompts(seed=10)
    n_answer = torch.tensor([2, 1, 2, 1, 1, 2, 1])
    answer_pos = lengths - n_answer
    prompts = align(model, tokens, answer_pos, n_answer_tokens=n_answer)
    cells = [
        cell for cell in sweep_cells(tokens, answer_pos) if all(i.pos in ("answer", "all") for i in cell.interventions)
    ]

    def score(logits, index):
        return logits.flatten(1).cpu()

    rows = torch.arange(len(tokens))[:, None]
    columns = answer_pos[:, None] + torch.minimum(torch.arange(2), n_answer[:, None] - 1)
    shared = run_sweep(model, prompts, cells, score, rows_per_pass=5)
    monkeypatch.setattr(stacking, "supports_blocked_keys", lambda model: False)
    stacked = run_sweep(model, prompts, cells, score, rows_per_pass=5)
    for c, cell in enumerate(cells):
        two_columns = reference(model, tokens, answer_pos, cell)  # the logits at answer_pos and answer_pos + 1
        expected = two_columns.gather(1, (columns - answer_pos[:, None])[..., None].expand(-1, -1, 24)).flatten(1)
        torch.testing.assert_close(shared.cells[c], expected, atol=1e-6, rtol=0)
        torch.testing.assert_close(stacked.cells[c], expected, atol=1e-6, rtol=0)
    assert model(tokens)[rows, columns].flatten(1).allclose(shared.clean, atol=1e-6)


def test_a_users_hooks_where_cells_start_apply_once_as_in_separate_runs(model, monkeypatch):
    """Cells start from the clean residual entering their block; the user's hooks at that block's hook_resid_pre
    must change it once there, as in a full pass, not once in the clean pass and again in the cell's."""
    tokens, lengths, _ = ragged_prompts(seed=12)
    answer_pos = lengths - 2
    prompts = align(model, tokens, answer_pos, n_answer_tokens=2)
    cells = sweep_cells(tokens, answer_pos)
    shift = torch.linspace(-1, 1, 32, dtype=torch.float64)
    user_hooks = [(f"blocks.{block}.hook_resid_pre", lambda act, hook: act + shift) for block in range(3)]

    def score(logits, index):
        return logits.flatten(1).cpu()

    with torch.no_grad(), model.hooks(fwd_hooks=user_hooks):
        expected = torch.stack([reference(model, tokens, answer_pos, cell).flatten(1) for cell in cells])
        shared = run_sweep(model, prompts, cells, score, rows_per_pass=5)
        monkeypatch.setattr(stacking, "supports_blocked_keys", lambda model: False)
        stacked = run_sweep(model, prompts, cells, score, rows_per_pass=5)
    torch.testing.assert_close(shared.cells, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(stacked.cells, expected, atol=1e-6, rtol=0)


def test_a_shared_row_that_would_be_imprecise_falls_back_to_separate_rows(model, monkeypatch):
    if not supports_blocked_keys(model):
        pytest.skip("this model's attention cannot be masked through hooks: sweeps never share rows")
    tokens, lengths, _ = ragged_prompts(seed=11)
    prompts = align(model, tokens, lengths - 1)
    cells = sweep_cells(tokens, lengths - 1)[:1] * 3

    def score(logits, index):
        return logits[:, 0].cpu()

    expected = run_sweep(model, prompts, cells, score, rows_per_pass=len(prompts))

    def imprecise(*args, **kwargs):
        raise BlockedKeysPrecisionError("nearly all attention on blocked keys")

    monkeypatch.setattr(masking, "_mask_scores", imprecise)
    monkeypatch.setattr(masking, "_mask_pattern", imprecise)
    fallback = run_sweep(model, prompts, cells, score, rows_per_pass=len(prompts))  # one cell per stacked pass
    torch.testing.assert_close(fallback.cells, expected.cells, atol=1e-6, rtol=0)
    assert fallback.n_passes > expected.n_passes


@pytest.fixture(scope="module")
def local_attention():
    """A HookedTransformer with GPT-Neo's local attention (a window of 8 positions in block 1), float64."""
    if not hooked_transformer_available():
        pytest.skip("HookedTransformer (TransformerLens <= 3) builds local attention from a config")
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    config = HookedTransformerConfig(
        n_layers=2, d_model=32, n_ctx=40, d_head=8, n_heads=4, d_vocab=24, act_fn="gelu_new", seed=0,
        use_local_attn=True, attn_types=["global", "local"], window_size=8, dtype=torch.float64,
    )  # fmt: skip
    return HookedTransformer(config).eval()


@pytest.mark.parametrize("n_cells", [2, 6])
def test_a_sweep_on_local_attention_equals_hand_written_hooks_whether_its_rows_fit_the_window(local_attention, n_cells):
    """Prompts of 6 tokens, one cell per vector replacing the answer's residual. Two cells pack into rows of 7
    positions, within the window; six would make rows of 11, where the window hides the prefix from the last copies
    (their outputs used to differ from the cells run alone), so those passes run the cells as separate rows."""
    model = local_attention
    assert masking_strategy(adapt(model)) == "scores"
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(1, 24, (4, 6), generator=generator)
    vectors = torch.randn(n_cells, 4, 32, generator=generator, dtype=torch.float64)
    cells = [Cell((replace(0, vector, pos="answer"),)) for vector in vectors]
    sweep = run_sweep(model, align(model, tokens, 5), cells, lambda logits, index: logits[:, 0], rows_per_pass=64)

    def replaced(vector):  # hand-written: the answer's residual after block 0 replaced
        def hook(activation, hook):
            activation = activation.clone()
            activation[:, 5] = vector
            return activation

        return model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.hook_resid_post", hook)])[:, 5]

    with torch.no_grad():
        expected = torch.stack([replaced(vector) for vector in vectors])
    torch.testing.assert_close(sweep.cells, expected, atol=1e-9, rtol=0)


def test_a_packed_row_wider_than_a_sliding_window_is_refused(local_attention):
    """Two continuations of a 7-token prefix packed into one row of 11 positions: the window hides the prefix's start
    from the second continuation, which blocked_keys cannot restore."""
    model = local_attention
    before = hook_snapshot(model)
    generator = torch.Generator().manual_seed(1)
    residual = torch.randn(1, 11, 32, generator=generator, dtype=torch.float64)
    blocked = torch.zeros(1, 11, 11, dtype=torch.bool)
    blocked[:, 9:, 7:9] = True
    with pytest.raises(WindowedRowError, match="hides keys a packed row leaves its continuations"):
        run_with_interventions(model, residual, 7, [], n_answer_tokens=4, residual_layer=0, blocked_keys=blocked)
    assert hook_snapshot(model) == before
