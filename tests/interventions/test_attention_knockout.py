"""Attention knockout: tv_lens.interventions.knockout against hand-written TransformerLens hooks and analytic facts."""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import D_VOCAB, hook_snapshot, left_padded, ragged_prompts

import tv_lens
import tv_lens.interventions.knockouts as knockouts
from tv_lens.errors import LayerOutOfRangeError, ModelNotSupportedError, PositionError, ShapeError, TvLensError
from tv_lens.interventions import add, knockout, knockout_strategy, run_with_interventions
from tv_lens.interventions.sweep import Cell, align, run_sweep
from tv_lens.models import adapt

N_LAYERS, N_HEADS = 3, 4
HOOKS = {"scores": "blocks.{}.attn.hook_attn_scores", "pattern": "blocks.{}.attn.hook_pattern"}
TOL = {"atol": 1e-6, "rtol": 0}


def edit_attention(activation, strategy, edges):
    """Hand-written knockout of ``edges`` (row, head or None, query, keys): -inf scores, or zeroed and renormalised."""
    activation = activation.clone()
    for row, head, query, keys in edges:
        for h in range(activation.shape[1]) if head is None else [head]:
            if strategy == "scores":
                activation[row, h, query, keys] = float("-inf")
            else:
                activation[row, h, query, keys] = 0.0
                activation[row, h, query] = activation[row, h, query] / activation[row, h, query].sum()
    return activation


def hand_knockout_logits(model, tokens, layers, edges, strategy, attention_mask=None):
    """Full logits of TransformerLens's ``run_with_hooks`` with the hand-written knockout at ``layers``."""
    hooks = [
        (HOOKS[strategy].format(layer), lambda act, hook: edit_attention(act, strategy, edges)) for layer in layers
    ]
    kwargs = {} if attention_mask is None else {"attention_mask": attention_mask}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a bridge warns when a scores edit is discarded
        return model.run_with_hooks(tokens, fwd_hooks=hooks, **kwargs)


def at(logits, answer_pos):
    """Output rows at each prompt's answer position, ``[batch, 1, d_vocab]`` like ``InterventionRun.logits``."""
    return logits[torch.arange(len(logits)), answer_pos][:, None]


def strategy_of(model):
    """The model's knockout strategy; models without one are covered by the not-supported tests."""
    strategy = knockout_strategy(adapt(model))
    if strategy is None:
        pytest.skip(f"{type(model).__name__}: attention cannot be knocked out here (see test_knockout_strategy_...)")
    return strategy


def hides_position(model, strategy):
    """Independent check: blocking position 2 from every later query in every block (by ``edit_attention`` at the
    ``strategy`` hook point) makes the outputs after it independent of its token, where without it they differ."""
    tokens = torch.randint(1, D_VOCAB, (1, 8), generator=torch.Generator().manual_seed(5))
    changed = tokens.clone()
    changed[0, 2] = tokens[0, 2] % (D_VOCAB - 1) + 1
    pair = torch.cat([tokens, changed])
    edges = [(row, None, query, [2]) for row in range(2) for query in range(3, 8)]
    with torch.no_grad():
        free = model(pair)[:, 3:]
    blocked = hand_knockout_logits(model, pair, range(N_LAYERS), edges, strategy)[:, 3:]
    assert (free[0] - free[1]).abs().max() > 1e-3
    return bool(((blocked[0] - blocked[1]).abs() < 1e-9).all())


def test_knockout_is_exported_at_the_top_level():
    assert tv_lens.knockout is knockout
    assert "knockout" in tv_lens.__all__


def test_knockout_strategy_names_the_first_hook_point_whose_edit_hides_a_position(model):
    expected = next((s for s in ("scores", "pattern") if hides_position(model, s)), None)
    assert knockout_strategy(adapt(model)) == expected
    if type(model).__name__ == "HookedTransformer":
        assert expected == "scores"
    if expected is None:  # a real model whose attention hooks do not feed its output (TL 3.9's bridge)
        tokens, answer_pos, _ = ragged_prompts()
        before = hook_snapshot(model)
        with pytest.raises(ModelNotSupportedError, match="attention cannot be knocked out through its hook points"):
            run_with_interventions(model, tokens, answer_pos, [knockout(1, [0])])
        assert hook_snapshot(model) == before


def test_a_model_without_a_knockout_strategy_raises_model_not_supported(model, monkeypatch):
    monkeypatch.setattr(knockouts, "knockout_strategy", lambda adapter: None)
    tokens, answer_pos, _ = ragged_prompts()
    before = hook_snapshot(model)
    with pytest.raises(ModelNotSupportedError, match=r"knockout\(layer 1, attn, pos=answer\): this model's attention"):
        run_with_interventions(model, tokens, answer_pos, [knockout(1, [0])])
    assert hook_snapshot(model) == before


@pytest.mark.parametrize("head", [None, 2])
def test_knockout_at_the_answer_equals_a_hand_written_hook(model, head):
    strategy = strategy_of(model)
    tokens, answer_pos, _ = ragged_prompts(seed=1)
    edges = [(row, head, int(answer_pos[row]), [1, 3]) for row in range(len(tokens))]
    with torch.no_grad():
        run = run_with_interventions(model, tokens, answer_pos, [knockout(1, [1, 3], head=head)])
        clean = run_with_interventions(model, tokens, answer_pos, []).logits
    expected = at(hand_knockout_logits(model, tokens, [1], edges, strategy), answer_pos)
    torch.testing.assert_close(run.logits, expected, **TOL)
    assert run.writes == (len(tokens),)
    assert (run.logits - clean).abs().max() > 1e-4


@pytest.mark.parametrize("head", [None, 0])
def test_left_padded_knockout_with_keys_in_the_padded_layout_equals_a_hand_written_hook(model, head):
    strategy = strategy_of(model)
    tokens, answer_pos, lengths = ragged_prompts(seed=2)
    left, mask, left_pos = left_padded(tokens, lengths)
    shift = tokens.shape[1] - lengths
    keys = torch.zeros(len(tokens), tokens.shape[1], dtype=torch.bool)
    keys[torch.arange(len(tokens)), shift] = True  # each prompt's first token and its third
    keys[torch.arange(len(tokens)), shift + 2] = True
    edges = [(row, head, int(left_pos[row]), [int(shift[row]), int(shift[row]) + 2]) for row in range(len(tokens))]
    with torch.no_grad():
        run = run_with_interventions(model, left, left_pos, [knockout(2, keys, head=head)], attention_mask=mask)
        right = run_with_interventions(model, tokens, answer_pos, [knockout(2, [0, 2], head=head)])
        clean = run_with_interventions(model, left, left_pos, [], attention_mask=mask).logits
    expected = at(hand_knockout_logits(model, left, [2], edges, strategy, attention_mask=mask), left_pos)
    torch.testing.assert_close(run.logits, expected, **TOL)
    torch.testing.assert_close(run.logits, right.logits, **TOL)  # the same prompts right-padded, keys unshifted
    assert (run.logits - clean).abs().max() > 1e-4


def test_rows_select_prompts_and_leave_the_others_clean(model):
    strategy = strategy_of(model)
    tokens, answer_pos, _ = ragged_prompts(seed=3)
    chosen = [4, 1, 5]  # the mask rows follow this order, not sorted row order
    keys = torch.zeros(3, tokens.shape[1], dtype=torch.bool)
    keys[0, [0, 1]] = True
    keys[1, 2] = True
    keys[2, [1, 3]] = True
    edges = [(row, None, int(answer_pos[row]), keys[i].nonzero()[:, 0].tolist()) for i, row in enumerate(chosen)]
    with torch.no_grad():
        run = run_with_interventions(model, tokens, answer_pos, [knockout(0, keys, rows=chosen)])
        clean = run_with_interventions(model, tokens, answer_pos, []).logits
    expected = at(hand_knockout_logits(model, tokens, [0], edges, strategy), answer_pos)
    torch.testing.assert_close(run.logits, expected, **TOL)
    others = [row for row in range(len(tokens)) if row not in chosen]
    torch.testing.assert_close(run.logits[others], clean[others], **TOL)
    assert (run.logits[chosen] - clean[chosen]).abs().amax((1, 2)).min() > 1e-5
    assert run.writes == (3,)


def test_a_per_prompt_mask_equals_each_prompt_run_alone_with_its_own_mask(model):
    strategy_of(model)
    tokens, answer_pos, lengths = ragged_prompts(seed=4)
    queries = answer_pos - 1  # per-prompt query positions before the answer: the effect reaches it in later blocks
    generator = torch.Generator().manual_seed(6)
    keys = torch.rand(tokens.shape, generator=generator) < 0.4
    keys &= torch.arange(tokens.shape[1])[None, :] < queries[:, None]  # never the query itself, never after it
    keys[:, 0] = True
    with torch.no_grad():
        batch = run_with_interventions(model, tokens, answer_pos, [knockout(0, keys, pos=queries)])
        for row, length in enumerate(lengths.tolist()):
            alone = run_with_interventions(
                model,
                tokens[row : row + 1, :length],
                length - 1,
                [knockout(0, keys[row, :length], pos=int(queries[row]))],
            )
            torch.testing.assert_close(batch.logits[row : row + 1], alone.logits, **TOL)
        clean = run_with_interventions(model, tokens, answer_pos, []).logits
    assert (batch.logits - clean).abs().max() > 1e-4


def test_knockout_of_every_later_query_equals_a_hand_written_hook(model):
    strategy = strategy_of(model)
    tokens, answer_pos, _ = ragged_prompts(seed=7)
    width = tokens.shape[1]
    edges = [
        (row, 3, query, [k for k in (1, 2) if k < query]) for row in range(len(tokens)) for query in range(2, width)
    ]
    with torch.no_grad():
        run = run_with_interventions(model, tokens, answer_pos, [knockout(1, [1, 2], pos="all", head=3)])
    expected = at(hand_knockout_logits(model, tokens, [1], edges, strategy), answer_pos)
    torch.testing.assert_close(run.logits, expected, **TOL)


@pytest.mark.parametrize("per_prompt", [False, True])
def test_a_mask_of_queries_equals_a_hand_written_hook(model, per_prompt):
    """Several queries per prompt, each kept from the keys at or before it (keys after a query stay open to it)."""
    strategy = strategy_of(model)
    tokens, answer_pos, lengths = ragged_prompts(seed=11)
    left, mask, left_pos = left_padded(tokens, lengths)
    shift = tokens.shape[1] - lengths
    rows = torch.arange(len(tokens))
    queries = torch.zeros(tokens.shape, dtype=torch.bool)
    queries[rows, shift + 2] = True
    queries[rows, left_pos] = True  # the answer position too
    if not per_prompt:  # the same columns in every prompt: right-padded prompts, a mask [pos]
        left, mask, left_pos, shift = tokens, None, answer_pos, torch.zeros_like(shift)
        queries = torch.zeros(tokens.shape[1], dtype=torch.bool)
        queries[[2, int(answer_pos.min())]] = True
    keys = torch.zeros(len(tokens), tokens.shape[1], dtype=torch.bool)
    keys[rows, shift + 1] = True
    keys[rows, shift + 3] = True  # after the first query: blocked for the answer position only
    marked = queries if per_prompt else queries.expand(len(tokens), -1)
    edges = [
        (row, None, q, [k for k in keys[row].nonzero()[:, 0].tolist() if k <= q])
        for row in range(len(tokens))
        for q in marked[row].nonzero()[:, 0].tolist()
    ]
    with torch.no_grad():
        run = run_with_interventions(model, left, left_pos, [knockout(1, keys, pos=queries)], attention_mask=mask)
        clean = run_with_interventions(model, left, left_pos, [], attention_mask=mask).logits
    expected = at(hand_knockout_logits(model, left, [1], edges, strategy, attention_mask=mask), left_pos)
    torch.testing.assert_close(run.logits, expected, **TOL)
    assert (run.logits - clean).abs().max() > 1e-4


def test_bad_query_masks_name_the_problem(model):
    strategy_of(model)
    tokens, answer_pos, lengths = ragged_prompts(seed=12)
    left, mask, left_pos = left_padded(tokens, lengths)
    queries = torch.zeros(tokens.shape, dtype=torch.bool)
    queries[:, -1] = True
    before = hook_snapshot(model)
    with pytest.raises(ShapeError, match=r"got a query mask of shape \(3, 16\); expected \[pos\] for every prompt"):
        run_with_interventions(model, tokens, answer_pos, [knockout(0, [0], pos=queries[:3])])
    shortest = int(lengths.argmin())
    on_pad = torch.zeros(tokens.shape, dtype=torch.bool)
    on_pad[shortest, 0] = True
    with pytest.raises(
        PositionError, match=rf"marks a query at position 0 of prompt {shortest}, which is left padding"
    ):
        run_with_interventions(model, left, left_pos, [knockout(0, [15], pos=on_pad)], attention_mask=mask)
    with pytest.raises(PositionError, match=r"marks a query at position 15 of prompt 1, after the prompt's last"):
        run_with_interventions(model, tokens, answer_pos, [knockout(0, [0], pos=queries)])
    first = torch.zeros(tokens.shape[1], dtype=torch.bool)
    first[[0, 4]] = True
    with pytest.raises(PositionError, match=r"blocks every position the query at 0 of prompt 0 attends to"):
        run_with_interventions(model, tokens, answer_pos, [knockout(0, [0], pos=first)])
    assert hook_snapshot(model) == before


def test_blocking_a_key_from_every_later_query_in_every_block_hides_its_token(model):
    strategy_of(model)
    generator = torch.Generator().manual_seed(8)
    tokens = torch.randint(1, D_VOCAB, (5, 10), generator=generator)
    changed = tokens.clone()
    changed[:, 3] = tokens[:, 3] % (D_VOCAB - 1) + 1
    interventions = [knockout(layer, [3], pos="all") for layer in range(N_LAYERS)]

    def after_key(inputs, interventions):  # outputs at positions 4..9
        return run_with_interventions(model, inputs, 4, interventions, n_answer_tokens=6).logits

    with torch.no_grad():
        torch.testing.assert_close(
            after_key(changed, interventions), after_key(tokens, interventions), atol=1e-5, rtol=0
        )
        assert (after_key(changed, []) - after_key(tokens, [])).abs().amax((1, 2)).min() > 1e-3


def test_bad_knockouts_name_the_problem_and_leave_no_hook(model):
    strategy_of(model)
    tokens, answer_pos, lengths = ragged_prompts(seed=9)
    left, mask, left_pos = left_padded(tokens, lengths)
    shortest = int(answer_pos.argmin())
    before = hook_snapshot(model)
    cases = [
        (
            PositionError,
            rf"blocks position {int(answer_pos[shortest]) + 1} of prompt {shortest}, after its query",
            lambda: run_with_interventions(model, tokens, answer_pos, [knockout(1, [int(answer_pos.min()) + 1])]),
        ),
        (
            PositionError,
            r"blocks every position the query at \d+ of prompt 0 attends to",
            lambda: run_with_interventions(model, tokens, answer_pos, [knockout(1, [0, 1, 2], pos=2)]),
        ),
        (
            PositionError,
            rf"blocks position 0 of prompt {int(lengths.argmin())}, which is left padding",
            lambda: run_with_interventions(model, left, left_pos, [knockout(1, [0])], attention_mask=mask),
        ),
        (
            PositionError,
            r"blocks position 20 of prompt 0, after its query \(position 15\)",
            lambda: run_with_interventions(model, tokens, answer_pos, [knockout(1, [20])]),
        ),
        (
            PositionError,
            r"knockout key positions must be >= 0 \(from the start\), got \[3, -1\]",
            lambda: knockout(1, [3, -1]),
        ),
        (
            ShapeError,
            r"knockout keys must be a bool mask .* got torch.float32 of shape \(2,\)",
            lambda: knockout(1, torch.tensor([0.0, 1.0])),
        ),
        (
            ShapeError,
            r"got torch.float64 of shape \(7, 16\)",
            lambda: knockout(1, torch.zeros(7, 16, dtype=torch.float64)),
        ),
        (
            ShapeError,
            r"got keys of shape \(3, 16\); expected \[pos\] for every prompt or \[7, pos\]",
            lambda: run_with_interventions(
                model, tokens, answer_pos, [knockout(1, torch.eye(3, 16, dtype=torch.bool))]
            ),
        ),
        (
            ShapeError,
            r"expected \[pos\] for every prompt or \[2, pos\]",
            lambda: run_with_interventions(
                model, tokens, answer_pos, [knockout(1, torch.eye(3, 16, dtype=torch.bool), rows=[0, 1])]
            ),
        ),
        (
            LayerOutOfRangeError,
            "Head 4 is out of range",
            lambda: run_with_interventions(model, tokens, answer_pos, [knockout(1, [0], head=N_HEADS)]),
        ),
        (
            LayerOutOfRangeError,
            "Head -1 is out of range",
            lambda: run_with_interventions(model, tokens, answer_pos, [knockout(1, [0], head=-1)]),
        ),
        (
            LayerOutOfRangeError,
            "Layer -1 is out of range",
            lambda: run_with_interventions(model, tokens, answer_pos, [knockout(-1, [0])]),
        ),
        (
            LayerOutOfRangeError,
            f"Layer {N_LAYERS} is out of range",
            lambda: run_with_interventions(model, tokens, answer_pos, [knockout(N_LAYERS, [0])]),
        ),
    ]
    for error, match, call in cases:
        assert issubclass(error, TvLensError)
        with pytest.raises(error, match=match):
            call()
        assert hook_snapshot(model) == before, match


@pytest.mark.parametrize("rows_per_pass", [3, 21])  # 3: prompts in several passes; 21: 3 cells stacked per pass
def test_a_sweep_of_knockout_cells_equals_separate_runs(model, rows_per_pass):
    strategy_of(model)
    tokens, _, lengths = ragged_prompts(seed=10)
    left, mask, left_pos = left_padded(tokens, lengths)
    prompts = align(model, left, left_pos, attention_mask=mask)  # aligned layout: each prompt starts at column 0
    width = prompts.inputs.shape[1]
    generator = torch.Generator().manual_seed(11)
    keys = torch.rand(len(prompts), width, generator=generator) < 0.3
    keys &= torch.arange(width)[None, :] < prompts.answer_pos[:, None]
    keys[:, 1] = True
    vector = torch.randn(32, generator=generator, dtype=torch.float64)
    cells = [
        Cell((knockout(1, keys),)),
        Cell((knockout(2, keys, head=1),)),
        Cell((knockout(0, [0, 2], pos="all"),)),
        Cell((knockout(2, keys), add(2, vector))),
        Cell((add(1, vector),)),
        Cell(()),
    ]

    def score(logits, index):
        return logits[:, 0].cpu()

    with torch.no_grad():
        sweep = run_sweep(model, prompts, cells, score, rows_per_pass=rows_per_pass)
        for c, cell in enumerate(cells):
            alone = run_with_interventions(model, prompts.inputs, prompts.answer_pos, list(cell.interventions))
            torch.testing.assert_close(sweep.cells[c], alone.logits[:, 0], **TOL, msg=lambda m, c=c: f"cell {c}: {m}")
    assert sweep.writes[:4] == ((7,), (7,), (7,), (7, 7))
    assert (sweep.cells[0] - sweep.clean).abs().max() > 1e-4
    if rows_per_pass == 21:
        assert sweep.n_passes < 1 + len(cells)  # copies of the prompts were stacked


@pytest.mark.parametrize("rows_per_pass", [7, 1])
def test_a_sweep_rejects_a_key_after_a_short_prompts_query_whatever_rows_per_pass(model, rows_per_pass):
    """As a separate run does; a pass holding only short prompts (cut to their own width) must not drop the key."""
    strategy_of(model)
    tokens, answer_pos, _ = ragged_prompts(seed=10)
    prompts = align(model, tokens, answer_pos)
    cell = Cell((knockout(1, [int(prompts.answer_pos.max())]),))  # after every shorter prompt's answer

    def score(logits, index):
        return logits[:, 0].cpu()

    with pytest.raises(PositionError, match="after its query"):
        run_with_interventions(model, prompts.inputs, prompts.answer_pos, list(cell.interventions))
    with pytest.raises(PositionError, match="after its query"):
        run_sweep(model, prompts, [cell], score, rows_per_pass=rows_per_pass)


@pytest.mark.parametrize("hidden", [float("-inf"), torch.finfo(torch.float32).min])
def test_a_query_left_only_keys_its_model_hides_raises_on_scores_and_patterns(hidden):
    """Analytic: one query sees keys 1..3 of 4 (key 0 is hidden by the model's own mask, as a sliding window hides it,
    with -inf like TransformerLens or the dtype's lowest value like HuggingFace). Blocking keys 1..3 leaves it
    nothing, on scores and on patterns (the error names the row's prompt, 7, and the query's position past its 2 left
    pads, 5); blocking 1..2 leaves key 3 and gives it every weight."""
    scores = torch.tensor([hidden, 0.5, -1.0, 2.0]).expand(1, 2, 4, 4).clone()
    pattern = torch.softmax(scores, -1)
    query, local, prompt, shift = torch.tensor([3]), torch.tensor([0]), torch.tensor([7]), torch.tensor([2])
    for name, attention in (("scores", scores), ("pattern", pattern)):
        hook_name = HOOKS[name].format(0)
        every_seen = torch.tensor([[False, True, True, True]])
        blocked = knockout(0, every_seen)
        with pytest.raises(knockouts.HiddenKeysError, match="position 5 of prompt 7 sees in block 0") as error:
            knockouts.knocked_out(attention, hook_name, blocked, every_seen, query, local, prompt, shift)
        assert error.value.intervention is blocked
        one_left = torch.tensor([[False, True, True, False]])
        out = knockouts.knocked_out(attention, hook_name, knockout(0, one_left), one_left, query, local, prompt, shift)
        weights = torch.softmax(out, -1) if name == "scores" else out
        torch.testing.assert_close(weights[0, :, 3], torch.tensor([[0.0, 0.0, 0.0, 1.0]] * 2))
        torch.testing.assert_close(out[0, :, :3], attention[0, :, :3])  # other queries untouched
