"""The logit lens of task and function vectors against a hand computation: ln_final, then W_U and b_U."""

from __future__ import annotations

import pytest
import torch
from causal_helpers import POOL
from conftest import hook_snapshot, tiny_config
from text_tokenizers import TiktokenLike, byte_bpe, word_level

from tv_lens.analyses import decode_vectors, function_vector, mean_head_activations
from tv_lens.errors import AnalysisError, ShapeError, TvLensError, UnknownNameError
from tv_lens.models import build_model
from tv_lens.results import Result, VectorDecoding
from tv_lens.task_vectors import TaskVectors


class Letters:
    """A tokenizer stand-in: token ``i`` decodes to ``"t{i}"``."""

    def decode(self, ids):
        return "".join(f"t{i}" for i in ids)


@pytest.fixture(scope="module")
def vectors(model):
    tv = TaskVectors.from_model(model, POOL, layers=(-1, 0, 2), n_per_task=4, n_shots=3, seed=0)
    clean = POOL.sample(4, 3, 0)
    means = mean_head_activations(model, clean)
    return tv, function_vector(model, means, [(1, 0), (2, 2)])


def hand_lens(model, v):
    """Reference: the model's final norm on the vector alone, then the unembedding by hand (W_U, b_U)."""
    with torch.no_grad():
        normed = model.ln_final(v.to(model.W_U.dtype)[None, None])[0, 0]
        if model.cfg.normalization_type == "LN":  # and that norm by hand: centre, divide by the RMS, weight, bias
            centred = v.double() - v.double().mean()
            scale = (centred.pow(2).mean() + model.cfg.eps).sqrt()
            weight = model.ln_final.w if hasattr(model.ln_final, "w") else model.ln_final.weight
            bias = model.ln_final.b if hasattr(model.ln_final, "b") else model.ln_final.bias
            by_hand = centred / scale * weight.double() + bias.double()
            torch.testing.assert_close(normed.double(), by_hand, atol=1e-10, rtol=0)
        return (normed @ model.W_U + model.b_U).double()


def test_task_and_function_vectors_decode_as_the_hand_computation(model, vectors):
    tv, fv = vectors
    decoded = tv.decode(model, k=5, tokenizer=Letters())
    assert decoded == decode_vectors(model, tv, 5, tokenizer=Letters())
    assert (
        decoded.names[:3] == ("offset(1) L-1", "offset(1) L0", "offset(1) L2") and decoded.normalisation == "ln_final"
    )
    for i, (task, layer) in enumerate((t, ly) for t in tv.task_names for ly in tv.layers):
        logits = hand_lens(model, tv.get(task, layer))
        top = torch.topk(logits, 5)
        assert decoded.token_ids[i].tolist() == top.indices.tolist()
        torch.testing.assert_close(decoded.logits[i], top.values, atol=1e-10, rtol=0)
        assert decoded.tokens[i] == tuple(f"t{t}" for t in top.indices.tolist())
        assert (decoded.task_names[i], decoded.layers[i]) == (task, layer)
    by_fv = fv.decode(model, k=3)
    assert by_fv.names == tuple(f"{task} FV" for task in fv.task_names) and by_fv.tokens is None
    for t, task in enumerate(fv.task_names):
        top = torch.topk(hand_lens(model, fv.get(task)), 3)
        assert by_fv.token_ids[t].tolist() == top.indices.tolist()
        torch.testing.assert_close(by_fv.logits[t], top.values, atol=1e-10, rtol=0)
    plain = decode_vectors(model, {"a": fv.get("offset(1)"), "b": tv.get("null", 0)}, 3)
    assert (
        torch.equal(plain.token_ids[0], by_fv.token_ids[0])
        and plain.top("b") == decoded.token_ids[decoded.names.index("null L0"), :3].tolist()
    )


def test_table_figure_and_exact_save_load(model, vectors, tmp_path):
    tv, _ = vectors
    decoded = tv.decode(model, k=4, tokenizer=Letters())
    frame = decoded.to_frame()
    assert list(frame.columns) == ["vector", "task", "layer", "rank", "token_id", "token", "logit"]
    assert len(frame) == 4 * 3 * 4 and frame["token"].iloc[0] == decoded.tokens[0][0]
    assert decoded.figure().data[0].type == "heatmap"
    assert decoded.top("offset(2) L2") == list(decoded.tokens[decoded.names.index("offset(2) L2")])
    path = decoded.save(tmp_path / "decoded.safetensors")
    assert VectorDecoding.load(path) == decoded and Result.load(path) == decoded
    untokenised = decode_vectors(model, tv.vectors[0, 0], 2)
    assert untokenised.names == ("vector",) and VectorDecoding.load(untokenised.save(tmp_path / "u")) == untokenised


def test_user_hooks_do_not_change_the_decoding_and_stay_attached(model, vectors):
    tv, _ = vectors
    expected = decode_vectors(model, tv, 3)
    before = hook_snapshot(model)
    name = next(n for n in model.hook_dict if n.startswith("ln_final.hook_normalized"))

    def ruin(activation, hook):
        return activation * 0

    model.hook_dict[name].add_hook(ruin)
    try:
        assert decode_vectors(model, tv, 3) == expected
        assert hook_snapshot(model) != before  # the user's hook is still there
    finally:
        model.reset_hooks()
    assert hook_snapshot(model) == before


def test_bad_input_is_a_clear_error(model, vectors):
    tv, fv = vectors
    cases = [
        (AnalysisError, "k must be", lambda: decode_vectors(model, tv, 0)),
        (AnalysisError, "k must be", lambda: decode_vectors(model, fv, model.cfg.d_vocab + 1)),
        (ShapeError, "d_model", lambda: decode_vectors(model, torch.ones(5), 3)),
        (ShapeError, "dict", lambda: decode_vectors(model, {}, 3)),
        (ShapeError, "TaskVectors", lambda: decode_vectors(model, "offset(1)", 3)),
        (UnknownNameError, "No decoded vector", lambda: decode_vectors(model, fv, 2).top("xor")),
    ]
    for error, match, call in cases:
        with pytest.raises(error, match=match) as info:
            call()
        assert isinstance(info.value, TvLensError)


@pytest.mark.parametrize("make", [word_level, byte_bpe], ids=["tokenizers.Tokenizer", "PreTrainedTokenizerFast"])
def test_special_tokens_decode_as_themselves(model, make):
    """``[PAD]`` reads ``"[PAD]"``, not the ``""`` a ``tokenizers.Tokenizer`` decodes it to by default."""
    tokenizer = make()
    vector = torch.randn(model.cfg.d_model, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    decoded = decode_vectors(model, vector, k=model.cfg.d_vocab, tokenizer=tokenizer)  # every token, in some order
    by_id = {i: token for token, i in tokenizer.get_vocab().items()}
    special = {"[UNK]", "[PAD]", "<pad>", "<bos>"}
    ids = decoded.token_ids[0].tolist()
    assert {by_id[i] for i in ids} & special  # the check reaches special tokens
    for i, token in zip(ids, decoded.tokens[0], strict=True):
        if make is word_level or by_id[i] in special:  # a word-level token is its own string
            assert token == by_id[i]


def tiktoken_with_a_gap():
    """The tiktoken stand-in without one id below its last (cl100k_base has such gaps before its special tokens)."""
    tokenizer = TiktokenLike()
    del tokenizer._bytes[tokenizer.n_vocab - 2]
    return tokenizer


@pytest.mark.parametrize(
    ("make", "ids_of"),
    [
        (word_level, lambda t: set(t.get_vocab(with_added_tokens=True).values())),
        (byte_bpe, lambda t: set(t.get_vocab().values())),
        (tiktoken_with_a_gap, lambda t: set(t._bytes)),
    ],
    ids=["tokenizers.Tokenizer", "PreTrainedTokenizerFast", "tiktoken"],
)
def test_ids_the_tokenizer_does_not_have_are_never_ranked(make, ids_of):
    """A ``d_vocab`` padded past the tokenizer (Pythia's, to a multiple of 128) has rows that decode to ``""``."""
    tokenizer = make()
    ids = ids_of(tokenizer)
    n_ids = max(ids) + 1
    model = build_model(tiny_config("bridge", dtype="float64", d_vocab=n_ids + 8))
    outside = [i for i in range(model.cfg.d_vocab) if i not in ids]
    w_u = model.W_U.detach().double()
    vector = (w_u[:, outside] * torch.linspace(1, 2, len(outside), dtype=torch.float64)).sum(-1) * 10
    logits = hand_lens(model, vector)
    assert set(torch.topk(logits, 5).indices.tolist()) & set(outside)  # the padded ids lead the logit lens
    decoded = decode_vectors(model, vector, k=5, tokenizer=tokenizer)
    inside = torch.tensor(sorted(ids))
    top = torch.topk(logits[inside], 5)
    assert decoded.token_ids[0].tolist() == inside[top.indices].tolist()
    torch.testing.assert_close(decoded.logits[0], top.values, atol=1e-10, rtol=0)
    assert all(decoded.tokens[0]) and not set(decoded.token_ids[0].tolist()) & set(outside)
    assert set(decode_vectors(model, vector, k=5).token_ids[0].tolist()) & set(outside)  # no tokenizer: every id
    with pytest.raises(AnalysisError, match=rf"k={len(ids) + 1} is more tokens than the tokenizer has") as info:
        decode_vectors(model, vector, k=len(ids) + 1, tokenizer=tokenizer)
    assert f"pass k <= {len(ids)}" in str(info.value)
