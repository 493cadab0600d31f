"""Attention knockout on every real architecture and loader: it hides a position, equals a hand-written hook, and
refuses to leave a query no key inside its sliding window."""

from __future__ import annotations

import warnings
from functools import partial

import pytest
import torch
from conftest import hook_snapshot
from pretrained_helpers import (
    loaded,
    one_thread,  # noqa: F401  (autouse: tiny models run on one thread)
    padded,
    pretrained_fixture,  # noqa: F401  (fixture `pretrained`: every architecture x loader)
    prompt_tokens,
)

from tv_lens.errors import ModelNotSupportedError
from tv_lens.interventions import Cell, align, knockout, knockout_strategy, run_sweep, run_with_interventions
from tv_lens.interventions.knockouts import HiddenKeysError
from tv_lens.models import adapt

TOL = {"atol": 1e-5, "rtol": 1e-5}
HOOKS = {"scores": "blocks.{}.attn.hook_attn_scores", "pattern": "blocks.{}.attn.hook_pattern"}


def attention_hooks_reach_the_output(model):
    """Independent check: whether editing ``attn.hook_attn_scores`` or ``attn.hook_pattern`` in every block changes
    the logits (a TransformerBridge whose attention delegates to the HuggingFace module discards such edits)."""
    tokens = torch.arange(3, 13)[None]
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the bridge warns that the edit is discarded
        clean = model(tokens)
        for hook in HOOKS.values():
            hooks = [(hook.format(layer), lambda act, hook: act * 0.5) for layer in range(model.cfg.n_layers)]
            if (model.run_with_hooks(tokens, fwd_hooks=hooks) - clean).abs().max() > 1e-3:
                return True
    return False


def strategy_of(pretrained):
    """The knockout strategy; a model whose attention hooks do not reach its output (Llama-4 through the bridge
    here) is checked by test_knockout_strategy_is_found_where_the_attention_hooks_reach_the_output instead."""
    strategy = knockout_strategy(adapt(pretrained.model))
    if strategy is None and not attention_hooks_reach_the_output(pretrained.model):
        pytest.skip(f"{pretrained}: the model discards edits of its attention hooks, so it has no knockout")
    assert strategy in ("scores", "pattern"), f"{pretrained}: attention cannot be knocked out (strategy {strategy!r})"
    return strategy


def test_knockout_strategy_is_found_where_the_attention_hooks_reach_the_output(pretrained):
    strategy = knockout_strategy(adapt(pretrained.model))
    if attention_hooks_reach_the_output(pretrained.model):
        assert strategy in ("scores", "pattern"), f"{pretrained}: no knockout strategy, yet its attention hooks work"
        if pretrained.loader == "hooked":
            assert strategy == "scores"
        return
    assert strategy is None
    tokens = torch.tensor([prompt_tokens(pretrained.tokenizer)[0]])
    with pytest.raises(ModelNotSupportedError, match="attention cannot be knocked out through its hook points"):
        run_with_interventions(pretrained.model, tokens, tokens.shape[1] - 1, [knockout(0, [1])])


def test_blocking_a_key_from_every_later_query_in_every_block_hides_its_token(pretrained):
    strategy_of(pretrained)
    model = pretrained.model
    rows = prompt_tokens(pretrained.tokenizer)[:4]
    length = min(map(len, rows))
    tokens = torch.tensor([row[:length] for row in rows])
    changed = tokens.clone()
    changed[:, 2] = (tokens[:, 2] + 1) % model.cfg.d_vocab
    interventions = [knockout(layer, [2], pos="all") for layer in range(model.cfg.n_layers)]

    def after_key(inputs, interventions):  # outputs at every position after the key
        return run_with_interventions(model, inputs, 3, interventions, n_answer_tokens=length - 3).logits

    with torch.no_grad():
        torch.testing.assert_close(after_key(changed, interventions), after_key(tokens, interventions), **TOL)
        assert (after_key(changed, []) - after_key(tokens, [])).abs().max() > 1e-3


@pytest.mark.parametrize("head", [None, 1])
def test_knockout_at_the_answer_in_the_last_block_equals_a_hand_written_hook(pretrained, head):
    """On prompts mixing right and left padding, keys per prompt in the padded layout (two early real tokens); every
    head, or one query head (of a key/value head shared with another, on grouped-query attention)."""
    strategy = strategy_of(pretrained)
    model = pretrained.model
    tokens, mask, answer_pos = padded(prompt_tokens(pretrained.tokenizer), pretrained.tokenizer.pad_token_id, "mixed")
    start = mask.argmax(1)  # each prompt's first real token
    batch = torch.arange(len(tokens))
    keys = torch.zeros(tokens.shape, dtype=torch.bool)
    keys[batch, start + 1] = True
    keys[batch, start + 2] = True
    last = model.cfg.n_layers - 1
    heads = slice(None) if head is None else head

    def hook(activation, hook):
        activation = activation.clone()
        for row in range(len(tokens)):
            query, blocked = int(answer_pos[row]), [int(start[row]) + 1, int(start[row]) + 2]
            if strategy == "scores":
                activation[row, heads, query, blocked] = float("-inf")
            else:
                activation[row, heads, query, blocked] = 0.0
                activation[row, heads, query] /= activation[row, heads, query].sum(-1, keepdim=True)
        return activation

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a bridge warns when a scores edit is discarded
        run = run_with_interventions(model, tokens, answer_pos, [knockout(last, keys, head=head)], attention_mask=mask)
        hooked = model.run_with_hooks(tokens, fwd_hooks=[(HOOKS[strategy].format(last), hook)], attention_mask=mask)
        clean = model(tokens, attention_mask=mask)[batch, answer_pos]
    torch.testing.assert_close(run.logits[:, 0], hooked[batch, answer_pos], **TOL)
    assert run.writes == (len(tokens),)
    assert (run.logits[:, 0] - clean).abs().max() > 1e-3


#: Architectures whose test models have sliding-window attention in some block (window of 8 tokens).
SLIDING = ("gemma2", "gemma3_text", "mistral", "gpt_oss", "olmo3", "gpt_neo")


def sees_the_first_key(model, tokens, query):
    """Independent check, per block: whether the model's own attention gives the first key any weight at ``query``
    of the first prompt (a block with a sliding window shorter than ``query`` gives it none in every head)."""
    patterns = []
    hooks = [(HOOKS["pattern"].format(b), lambda act, hook: patterns.append(act)) for b in range(model.cfg.n_layers)]
    with torch.no_grad():
        model.run_with_hooks(tokens[:1], fwd_hooks=hooks)
    return [bool((pattern[0, :, query, 0] > 0).any()) for pattern in patterns]


def window_prompts(model):
    """Three left-padded prompts of 16, 20 and 18 random tokens; the last 8 positions of prompt 2 blocked."""
    generator = torch.Generator().manual_seed(0)
    rows = [torch.randint(3, model.cfg.d_vocab, (n,), generator=generator).tolist() for n in (16, 20, 18)]
    tokens, mask, answer_pos = padded(rows, 0, "left")
    keys = torch.zeros(tokens.shape, dtype=torch.bool)
    keys[2, -8:] = True  # every key a window of 8 lets the last query see
    return tokens, mask, answer_pos, keys


def test_a_knockout_of_every_key_in_a_sliding_window_names_the_prompt_and_position(pretrained):
    """In a block whose own mask hides the keys before the window, blocking every key in the window raises
    HiddenKeysError (it used to spread the query's attention over keys the model never lets it see); in a block
    without a window the same knockout runs. The error names the prompt and position as given, though the prompt
    ran alone in its pass and was shifted left; no hook is left behind."""
    strategy_of(pretrained)
    model = pretrained.model
    before = hook_snapshot(model)
    tokens, mask, answer_pos, keys = window_prompts(model)
    sees = sees_the_first_key(model, tokens[1:2], 19)
    if pretrained.arch in SLIDING:
        assert not all(sees), f"{pretrained}: no block has a window, though the architecture was built with one"
    for block, global_attention in enumerate(sees):
        run = partial(run_with_interventions, model, tokens, answer_pos, [knockout(block, keys)], attention_mask=mask)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            if global_attention:
                assert run(batch_size=1).writes == (3,)
                continue
            with pytest.raises(HiddenKeysError, match=rf"position 19 of prompt 2 sees in block {block}:") as error:
                run(batch_size=1)
            assert (error.value.prompt, error.value.position) == (2, 19)
            assert hook_snapshot(model) == before


def test_a_sweep_names_the_prompt_and_the_cell_knockout_a_sliding_window_leaves_no_key(tmp_path_factory):
    """Through run_sweep, whose passes hold one prompt (stacked once per cell): the error names the prompt by its
    index in the sweep's prompts and the cell's own knockout, not the copy a pass ran."""
    model = loaded(tmp_path_factory, "mistral", "bridge").model
    tokens, mask, answer_pos, keys = window_prompts(model)
    prompts = align(model, tokens, answer_pos, attention_mask=mask)
    aligned_keys = torch.stack([row.roll(-int(pads)) for row, pads in zip(keys, mask.argmax(1), strict=True)])
    blocked = knockout(0, aligned_keys)
    cells = [Cell((knockout(0, [0]),)), Cell((blocked,))]
    with torch.no_grad(), pytest.raises(HiddenKeysError, match="position 17 of prompt 2 sees in block 0") as error:
        run_sweep(model, prompts, cells, lambda logits, index: logits[:, 0, 0], rows_per_pass=1)
    assert error.value.intervention is blocked
