"""Head attention: shares by role against hand-written TransformerLens hooks, padding, batching, roles, errors."""

from __future__ import annotations

import pytest
import torch
from causal_helpers import POOL, failing_user_hook, left_pad, sample
from conftest import hook_snapshot

from tv_lens.analyses import HeadAttention, Prompts, role_attention
from tv_lens.errors import AnalysisError, ConfigError, LayerOutOfRangeError, ShapeError, TaskError
from tv_lens.models import ModelConfig
from tv_lens.models.continuous import build_continuous_model
from tv_lens.results import Result, RoleAttention
from tv_lens.tasks import PROMPT_ROLES, demonstration_roles, position_roles, regression_pool

TOL = {"atol": 1e-9, "rtol": 1e-9}  # the float64 test models


def cached_shares(model, batch, roles, n_roles):
    """Reference: each prompt alone through ``run_with_cache``; its answer row of every pattern, summed by role."""
    n_layers = model.cfg.n_layers
    names = [f"blocks.{layer}.attn.hook_pattern" for layer in range(n_layers)]
    shares = torch.zeros(n_layers, model.cfg.n_heads, n_roles, len(batch), dtype=torch.float64)
    for i in range(len(batch)):
        length, ap = int(batch.attention_mask[i].sum()), int(batch.answer_pos[i])
        with torch.no_grad():
            _, cache = model.run_with_cache(batch.inputs[i : i + 1, :length], names_filter=lambda name: name in names)
        for layer, name in enumerate(names):
            row = cache[name][0, :, ap].double()  # [head, key]
            for key in range(ap + 1):
                shares[layer, :, int(roles[i, key]), i] += row[:, key]
    return shares


@pytest.fixture(scope="module")
def analysed(model):
    batch = sample(n_per_task=3, n_shots=(0, 3), seed=0)
    result = HeadAttention(n_bootstrap=0, batch_size=5).run_batch(model, batch)
    return model, batch, result


def test_shares_equal_each_prompts_pattern_summed_by_role(analysed):
    model, batch, result = analysed
    expected = cached_shares(model, batch, position_roles(batch), len(PROMPT_ROLES))
    torch.testing.assert_close(result.attention, expected, **TOL)
    assert result.role_names == PROMPT_ROLES and result.layers == tuple(range(model.cfg.n_layers))


def test_the_roles_share_all_of_the_attention(analysed):
    _, batch, result = analysed
    torch.testing.assert_close(result.attention.sum(2), torch.ones_like(result.attention.sum(2)), **TOL)
    assert float(result.unattended.abs().max()) < 1e-9
    zero_shot = batch.n_shots == 0  # no demonstrations: nothing on their roles
    demo_roles = [PROMPT_ROLES.index("demo_input"), PROMPT_ROLES.index("demo_answer")]
    assert zero_shot.any() and float(result.attention[:, :, demo_roles][..., zero_shot].abs().max()) == 0.0


def role_means(attention, batch, roles, n_roles, rows):
    """Reference: the mean share on each role over the prompts of ``rows`` that have a position of it."""
    means = torch.full(attention.shape[:3], float("nan"), dtype=torch.float64)
    for r in range(n_roles):
        has = torch.tensor([bool((roles[i, : int(batch.answer_pos[i]) + 1] == r).any()) for i in range(len(batch))])
        if bool((has & rows).any()):
            means[:, :, r] = attention[:, :, r][..., has & rows].mean(-1)
    return means


def test_means_per_task_and_overall_leave_out_null_and_the_prompts_without_the_role(analysed):
    _, batch, result = analysed
    roles = position_roles(batch)
    for t in range(len(batch.task_names)):
        rows = batch.task_ids == t
        expected = role_means(result.attention, batch, roles, len(PROMPT_ROLES), rows)
        torch.testing.assert_close(result.per_task[..., t], expected, equal_nan=True, **TOL)
    real = torch.tensor([batch.task_names[int(t)] != "null" for t in batch.task_ids])
    assert not real.all()
    expected = role_means(result.attention, batch, roles, len(PROMPT_ROLES), real)
    torch.testing.assert_close(result.overall, expected, equal_nan=True, **TOL)
    assert bool(result.overall[:, :, PROMPT_ROLES.index("prefix")].isnan().all())  # no prompt has a prefix
    demo = PROMPT_ROLES.index("demo_answer")  # the zero-shot prompts have none: left out, not counted as zero
    zero_shot = batch.n_shots == 0
    assert zero_shot.any() and not bool(result.present[demo][zero_shot].any())
    assert bool(result.present[demo][~zero_shot].all()) and bool(result.present[PROMPT_ROLES.index("query")].all())
    diluted = result.attention[:, :, demo][..., real].mean(-1)
    assert bool((result.overall[:, :, demo] > diluted).all())


def test_left_padding_and_batch_size_give_the_same_shares(analysed):
    model, batch, result = analysed
    tokens, mask, answer_pos = left_pad(batch)
    roles = position_roles(batch)
    shifted = torch.full_like(roles, -7)  # after the answer position any value is allowed
    width, lengths = roles.shape[1], batch.attention_mask.sum(-1)
    for row, length in enumerate(lengths.tolist()):
        shifted[row, width - length :] = roles[row, :length]
    prompts = Prompts(tokens, answer_pos, None, batch.task_ids, batch.task_names, mask)
    again = role_attention(model, prompts, shifted, role_names=PROMPT_ROLES, config=HeadAttention(n_bootstrap=0))
    torch.testing.assert_close(again.attention, result.attention, **TOL)
    one_at_a_time = HeadAttention(n_bootstrap=0, batch_size=1).run_batch(model, batch)
    torch.testing.assert_close(one_at_a_time.attention, result.attention, **TOL)


def test_own_roles_sum_the_roles_they_merge(analysed):
    model, batch, result = analysed
    roles = position_roles(batch)
    answers = PROMPT_ROLES.index("demo_answer")
    merged = torch.where(roles == answers, 0, torch.where(roles >= 0, 1, -1))
    own = role_attention(model, batch, merged, role_names=("demo_answer", "other"), config=HeadAttention(n_bootstrap=0))
    torch.testing.assert_close(own.attention[:, :, 0], result.attention[:, :, answers], **TOL)
    rest = [r for r in range(len(PROMPT_ROLES)) if r != answers]
    torch.testing.assert_close(own.attention[:, :, 1], result.attention[:, :, rest].sum(2), **TOL)


def test_each_demonstration_apart_sums_to_the_roles_of_all_demonstrations(analysed, tmp_path):
    model, batch, result = analysed
    split = HeadAttention(by_demonstration=True, n_bootstrap=0, batch_size=4).run_batch(model, batch)
    roles, names = demonstration_roles(batch)
    assert split.role_names == names and len(names) == 3 * batch.max_shots + 3
    torch.testing.assert_close(split.attention, cached_shares(model, batch, roles, len(names)), **TOL)
    for part in ("demo_input", "demo_answer", "separator"):
        mine = [r for r, name in enumerate(names) if name.startswith(f"{part}[")]
        torch.testing.assert_close(split.attention[:, :, mine].sum(2), result.attention[:, :, PROMPT_ROLES.index(part)])
    far = names.index("demo_answer[-3]")  # only the three-shot prompts have it; the means leave out the others
    three = (batch.n_shots == 3) & torch.tensor([name != "null" for name in batch.task_names])[batch.task_ids]
    assert torch.equal(split.present[far], batch.n_shots == 3) and bool((batch.n_shots < 3).any())
    torch.testing.assert_close(split.overall[:, :, far], split.attention[:, :, far][..., three].mean(-1), **TOL)
    last = split.share("demo_answer[-1]")
    layer, head = split.top_heads(k=1)[0]  # the lead role: the last demonstration's answer
    assert split.headline()["role"] == "demo_answer[-1]" and last[layer, head] == last.max()
    assert result.top_heads(k=3) == result.top_heads("demo_answer", k=3)
    assert Result.load(split.save(tmp_path / "split.safetensors")) == split


def test_layers_read_only_the_blocks_asked_for(analysed):
    model, batch, result = analysed
    last = model.cfg.n_layers - 1
    some = HeadAttention(layers=(last, 0), n_bootstrap=0).run_batch(model, batch)
    assert some.layers == (last, 0)
    torch.testing.assert_close(some.attention, result.attention[[last, 0]], **TOL)


def test_run_samples_the_batch_run_batch_gets(model):
    config = HeadAttention(n_bootstrap=20)
    assert config.run(model, POOL, n_per_task=3, n_shots=2, seed=4) == config.run_batch(
        model, POOL.sample(3, 2, 4), seed=4
    )


def test_intervals_hold_their_means(model):
    result = HeadAttention(n_bootstrap=200).run(model, POOL, n_per_task=6, n_shots=2)
    low, high = result.overall_ci[..., 0], result.overall_ci[..., 1]
    absent = ~result.present.any(-1)  # roles no prompt has (the prefix, the separator): no mean, no interval
    assert absent.any() and bool(result.overall[:, :, absent].isnan().all() and low[:, :, absent].isnan().all())
    low, high, overall = low[:, :, ~absent], high[:, :, ~absent], result.overall[:, :, ~absent]
    assert bool((low <= overall + 1e-12).all()) and bool((overall <= high + 1e-12).all())
    assert bool((high > low).any())
    assert result.n_bootstrap == 200 and result.ci_level == 0.95


def test_table_figure_headline_and_file(analysed, tmp_path):
    _, batch, result = analysed
    frame = result.to_frame()
    n_layers, n_heads, n_roles = result.overall.shape
    assert list(frame.columns) == ["layer", "head", "role", "task", "share", "ci_low", "ci_high"]
    assert len(frame) == n_layers * n_heads * n_roles * (len(batch.task_names) + 1)
    row = frame[(frame["layer"] == 1) & (frame["head"] == 2) & (frame["role"] == "query") & (frame["task"] == "all")]
    assert float(row.share.iloc[0]) == float(result.overall[1, 2, PROMPT_ROLES.index("query")])
    share = result.share("demo_answer")
    ranked = sorted((float(share[layer, head]), -layer, -head) for layer in range(n_layers) for head in range(n_heads))
    expected = [(-layer, -head) for _, layer, head in reversed(ranked[-3:])]
    assert result.top_heads("demo_answer", 3) == expected
    headline = result.headline()
    assert headline["role"] == "demo_answer" and len(headline["top_heads"]) == 3
    assert headline["top_shares"][0] == pytest.approx(float(share.max()))
    assert set(headline["mean_share"]) == set(PROMPT_ROLES)
    figure = result.figure()
    assert [trace.visible for trace in figure.data] == [role == "demo_answer" for role in PROMPT_ROLES]
    assert [button.label for button in figure.layout.updatemenus[0].buttons] == list(PROMPT_ROLES)
    path = result.save(tmp_path / "attention.safetensors")
    loaded = Result.load(path)
    assert isinstance(loaded, RoleAttention) and loaded == result


def test_unknown_role_or_task_or_a_bad_count_names_the_known_ones(analysed):
    _, _, result = analysed
    with pytest.raises(TaskError, match=r"No role 'label' in this result; its roles are .*demo_input"):
        result.share("label")
    with pytest.raises(TaskError, match="null"):
        result.share("demo_answer", task="copy")
    with pytest.raises(AnalysisError, match=r"k must be an int in \[1, 12\]"):
        result.top_heads("query", k=13)


def test_top_heads_of_a_task_without_prompts_is_refused(model):
    batch = sample(n_per_task=2, seed=0)
    result = HeadAttention(n_bootstrap=0).run_batch(model, batch.select(batch.task_ids != 1))
    with pytest.raises(TaskError, match=r"no prompts in this result, so its attention share is NaN for every head"):
        result.top_heads("query", 3, task=batch.task_names[1])  # the first heads in block order, before
    assert result.share("query", batch.task_names[1]).isnan().all()
    assert len(result.top_heads("query", 3, task=batch.task_names[0])) == 3
    for value in (1, "yes", None):
        with pytest.raises(AnalysisError, match=f"by_demonstration must be True or False.*got {value!r}"):
            HeadAttention(by_demonstration=value)


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({"role_names": ("a", "b")}, ConfigError, "pass roles too"),
        ({"roles": "own"}, ConfigError, "roles need role_names"),
        ({"roles": "own", "role_names": ("a", "a")}, ConfigError, "distinct"),
        ({"roles": "own", "role_names": "ab"}, ConfigError, "non-empty strings"),
        ({"roles": "narrow", "role_names": PROMPT_ROLES}, ShapeError, "roles must be integer role ids of shape"),
        ({"roles": "float", "role_names": PROMPT_ROLES}, ShapeError, "integer role ids"),
        ({"roles": "own", "role_names": ("a", "b")}, TaskError, r"roles\[0, 0\] is 2"),
        ({"prompts": "own"}, TaskError, "no demonstration spans"),
        ({"config": HeadAttention(layers=(7,))}, LayerOutOfRangeError, "7"),
        ({"config": "wrong"}, ConfigError, "config must be a HeadAttention"),
        ({"roles": "own", "role_names": ("a", "b", "c"), "config": "split"}, ConfigError, "by_demonstration splits"),
    ],
)
def test_bad_roles_and_options_are_refused_before_any_hook(analysed, change, error, message):
    model, batch, _ = analysed
    roles = position_roles(batch)
    roles[:, 0] = 2  # out of range for two role names
    given = {"own": roles, "narrow": roles[:, :-1], "float": roles.double()}
    arguments = {"prompts": batch, "roles": None, "role_names": None, "config": HeadAttention(n_bootstrap=0)}
    arguments |= change
    if arguments["config"] == "split":
        arguments["config"] = HeadAttention(by_demonstration=True, n_bootstrap=0)
    if isinstance(arguments["roles"], str):
        arguments["roles"] = given[arguments["roles"]]
    if arguments["prompts"] == "own":
        arguments["prompts"] = Prompts(batch.inputs, batch.answer_pos, None, batch.task_ids, batch.task_names)
    before = hook_snapshot(model)
    with pytest.raises(error, match=message):
        role_attention(model, arguments.pop("prompts"), arguments.pop("roles"), **arguments)
    assert hook_snapshot(model) == before


def test_an_error_mid_pass_leaves_no_hook_of_ours(analysed):
    model, batch, _ = analysed
    before = hook_snapshot(model)
    with failing_user_hook(model, "blocks.1.attn.hook_pattern", fail_on_call=1), pytest.raises(RuntimeError):
        HeadAttention(n_bootstrap=0).run_batch(model, batch)
    assert hook_snapshot(model) == before


def test_regression_prompts_on_a_continuous_model():
    pool = regression_pool(("linear", "quadratic"), d=3)
    config = ModelConfig(d_vocab=4, n_layers=2, d_model=32, n_heads=4, n_ctx=64, dtype="float64")
    model = build_continuous_model(config, d_in=pool.d_in, d_out=pool.d_out)
    batch = pool.sample(3, n_shots=(1, 3), seed=0)
    result = HeadAttention(n_bootstrap=0).run_batch(model, batch)
    expected = cached_shares(model, batch, position_roles(batch), len(PROMPT_ROLES))
    torch.testing.assert_close(result.attention, expected, **TOL)
    assert float(result.attention[:, :, PROMPT_ROLES.index("query")].abs().max()) == 0.0  # the query's x is the
    assert bool(result.share("query").isnan().all())  # answer position itself: no prompt has a query role
