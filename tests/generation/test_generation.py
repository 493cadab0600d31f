"""Generation with interventions, checked against hand-written token-by-token loops over ``run_with_hooks``."""

from __future__ import annotations

import inspect
import warnings

import pytest
import torch
from conftest import BACKENDS, hook_snapshot, left_padded, ragged_prompts, tiny_config

from tv_lens.errors import (
    InterventionNotAppliedError,
    ModelNotSupportedError,
    PositionError,
    ShapeError,
    TvLensError,
)
from tv_lens.generation import (
    Generation,
    answer_texts,
    exact_match,
    first_word_match,
    generate,
    kv_cache_support,
    token_match,
)
from tv_lens.generation.matching import decoded_answers
from tv_lens.interventions import ablate_head, add, replace, run_with_interventions
from tv_lens.models import build_model
from tv_lens.tasks import offset_pool

D_MODEL, N_LAYERS, N_CTX = 32, 2, 40


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One thread, as the docs and training tests use: tiny models gain nothing from more, and on a busy machine
    threads waiting on each other slow each generation step many times over."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module", params=BACKENDS)
def model(request):
    """A 2-layer float64 model per available backend: token choices are exact, so equal means equal."""
    return build_model(tiny_config(request.param, dtype="float64", n_layers=N_LAYERS))


def vector(seed: int = 1, scale: float = 4.0) -> torch.Tensor:
    return torch.randn(D_MODEL, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale


def prompts(n: int = 4, width: int = 12, seed: int = 0):
    """Right-padded prompts of different lengths (tokens, answer_pos, lengths)."""
    tokens, answer_pos, lengths = ragged_prompts(n, width, seed)
    return tokens, answer_pos, lengths


# --- the independent reference: one prompt at a time, the whole sequence each step, a plain TL hook ---------------


def writer(kind: str, positions, value=None, head: int | None = None):
    """A TransformerLens hook that writes at ``positions(seq_len)`` of the single row of the batch."""

    def hook(activation, hook):
        activation = activation.clone()
        for p in positions(activation.shape[1]):
            if kind == "replace":
                activation[0, p] = value
            elif kind == "add":
                activation[0, p] = activation[0, p] + value
            else:
                activation[0, p, head] = 0.0
        return activation

    return hook


def reference(model, prompt: list[int], max_new: int, hooks, choose=None) -> list[int]:
    """Greedy (or ``choose(logits, k)``) continuation of one unpadded prompt, recomputing every step.

    The attention mask is all ones: the whole sequence is real tokens (a HookedTransformer whose tokenizer pads on
    the left would otherwise build its own mask from pad ids).
    """
    sequence, new = list(prompt), []
    for k in range(max_new):
        tokens = torch.tensor([sequence])
        with torch.no_grad():
            logits = model.run_with_hooks(tokens, fwd_hooks=hooks(len(prompt)), attention_mask=torch.ones_like(tokens))
        token = int(logits[0, -1].argmax()) if choose is None else choose(logits[0, -1], k)
        new.append(token)
        sequence.append(token)
    return new


CASES = {
    # name: (interventions made by tv_lens, reference hooks given the prompt length, every_new_token)
    "replace-answer": (
        lambda: [replace(0, vector())],
        lambda n: [("blocks.0.hook_resid_post", writer("replace", lambda width: [n - 1], vector()))],
        False,
    ),
    "add-every-new-token": (
        lambda: [add(0, vector(2))],
        lambda n: [("blocks.0.hook_resid_post", writer("add", lambda width: range(n - 1, width), vector(2)))],
        True,
    ),
    "ablate-head-prompt-only": (
        lambda: [ablate_head(1, 2, pos="all"), replace(-1, vector(3), pos=1)],
        lambda n: [
            ("blocks.1.attn.hook_z", writer("ablate", lambda width: range(n), head=2)),
            ("blocks.0.hook_resid_pre", writer("replace", lambda width: [1], vector(3))),
        ],
        False,
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_greedy_generation_equals_a_hand_written_loop(model, case):
    make, hooks, every = CASES[case]
    tokens, answer_pos, lengths = prompts()
    out = generate(model, tokens, make(), 4, answer_pos=answer_pos, every_new_token=every)
    assert isinstance(out, Generation) and out.tokens.shape == (4, 4)
    assert out.lengths.tolist() == [4] * 4 and not out.stopped.any() and out.texts is None
    assert out.prompt_lengths.tolist() == lengths.tolist()
    assert out.writes == (4,) * len(make())
    for row in range(4):
        expected = reference(model, tokens[row, : lengths[row]].tolist(), 4, hooks)
        assert out.tokens[row].tolist() == expected, row
    clean = generate(model, tokens, [], 4, answer_pos=answer_pos)
    assert (clean.tokens != out.tokens).any(dim=1).sum() >= 2  # the intervention changed the continuations


def test_sampling_equals_a_hand_written_loop_with_the_documented_draws(model):
    tokens, answer_pos, lengths = prompts()
    options = {"do_sample": True, "temperature": 1.7, "top_k": 6, "seed": 11}
    out = generate(model, tokens, [replace(0, vector())], 3, answer_pos=answer_pos, **options)
    uniforms = torch.rand(4, 3, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    for row in range(4):

        def choose(logits, k, row=row):
            scores = logits.double() / 1.7
            kept = scores.topk(6).indices
            probs = torch.zeros_like(scores)
            probs[kept] = torch.softmax(scores[kept], dim=0)
            return int(torch.searchsorted(probs.cumsum(0), uniforms[row, k] * probs.sum(), right=True))

        hooks = CASES["replace-answer"][1]
        assert out.tokens[row].tolist() == reference(model, tokens[row, : lengths[row]].tolist(), 3, hooks, choose)
    again = generate(model, tokens, [replace(0, vector())], 3, answer_pos=answer_pos, **options)
    assert torch.equal(again.tokens, out.tokens)
    other = generate(model, tokens, [replace(0, vector())], 3, answer_pos=answer_pos, **{**options, "seed": 12})
    assert not torch.equal(other.tokens, out.tokens)
    greedy = generate(model, tokens, [replace(0, vector())], 3, answer_pos=answer_pos)
    for temperature in (1e-3, 1e-300, 1e-320):  # towards 0, sampling is greedy (the scores must not overflow)
        cold = {**options, "temperature": temperature}
        assert torch.equal(
            generate(model, tokens, [replace(0, vector())], 3, answer_pos=answer_pos, **cold).tokens, greedy.tokens
        )


def test_samples_follow_the_tempered_top_k_distribution(model):
    """Many copies of one prompt in one pass: sample frequencies match softmax(logits / T) over the top k."""
    prompt = torch.tensor([[3, 7, 1, 9, 4, 4, 2]]).repeat(3000, 1)
    out = generate(model, prompt, [], 1, do_sample=True, temperature=3.0, top_k=5, seed=0, batch_size=3000)
    with torch.no_grad():
        logits = model(prompt[:1])[0, -1] / 3.0
    top = logits.topk(5).indices
    probs = torch.softmax(logits[top], dim=0)
    counts = torch.bincount(out.tokens[:, 0], minlength=logits.shape[0])
    assert counts.sum() == counts[top].sum()  # never a token outside the top k
    assert (counts[top] / 3000 - probs).abs().max() < 0.04


def test_left_padding_right_padding_and_batch_size_give_the_same_tokens(model):
    tokens, answer_pos, lengths = prompts(6, 14, seed=3)
    interventions = [add(1, vector(4)), ablate_head(0, 1, pos="answer")]
    right = generate(model, tokens, interventions, 5, answer_pos=answer_pos)
    left, mask, left_pos = left_padded(tokens, lengths)
    from_mask = generate(model, left, interventions, 5, attention_mask=mask)
    explicit = generate(model, left, interventions, 5, attention_mask=mask, answer_pos=left_pos)
    small = generate(model, tokens, interventions, 5, answer_pos=answer_pos, batch_size=2)
    for other in (from_mask, explicit, small):
        assert torch.equal(other.tokens, right.tokens) and other.writes == right.writes == (6, 6)
    alone = generate(model, tokens[2:3, : lengths[2]], [add(1, vector(4)), ablate_head(0, 1, pos="answer")], 5)
    assert torch.equal(alone.tokens[0], right.tokens[2])


def test_first_token_is_the_argmax_of_the_intervention_engine(model):
    """One token generated equals the argmax of ``run_with_interventions`` at the answer position, left padding too."""
    tokens, _, lengths = prompts(6, 14, seed=4)
    left, mask, left_pos = left_padded(tokens, lengths)
    interventions = [add(0, vector(8)), ablate_head(1, 1, pos="all")]
    engine = run_with_interventions(model, left, left_pos, interventions, attention_mask=mask)
    out = generate(model, left, interventions, 1, attention_mask=mask)
    assert out.tokens[:, 0].tolist() == engine.logits[:, 0].argmax(-1).tolist() and out.writes == engine.writes


def test_per_prompt_values_and_rows(model):
    tokens, answer_pos, lengths = prompts()
    values = torch.stack([vector(5), vector(6)])
    out = generate(model, tokens, [replace(1, values, rows=[3, 0])], 4, answer_pos=answer_pos)
    clean = generate(model, tokens, [], 4, answer_pos=answer_pos)
    assert out.writes == (2,)
    assert torch.equal(out.tokens[1:3], clean.tokens[1:3])
    for row, value in ((3, vector(5)), (0, vector(6))):
        alone = generate(model, tokens[row : row + 1, : lengths[row]], [replace(1, value)], 4)
        assert torch.equal(out.tokens[row], alone.tokens[0])


def test_kv_cache_path_equals_recomputing(model):
    tokens, answer_pos, _ = prompts(5, 14, seed=5)
    interventions = [replace(0, vector()), ablate_head(0, 3, pos="all"), add(1, vector(2))]
    recomputed = generate(model, tokens, interventions, 5, answer_pos=answer_pos, use_cache=False)
    assert not recomputed.used_cache
    if "past_kv_cache" in inspect.signature(model.forward).parameters:  # HookedTransformer: its own cache works
        assert kv_cache_support(model) == "hooked"
    if kv_cache_support(model) is None:  # e.g. a native TransformerBridge: no KV cache
        with pytest.raises(ModelNotSupportedError, match="use_cache='auto'"):
            generate(model, tokens, interventions, 5, answer_pos=answer_pos, use_cache=True)
        auto = generate(model, tokens, interventions, 5, answer_pos=answer_pos)
        assert not auto.used_cache and torch.equal(auto.tokens, recomputed.tokens)
        return
    hook_point = model.hook_dict["blocks.0.hook_resid_pre"]
    hook_point.add_hook(lambda activation, hook: None)  # a hook of the user's: "auto" recomputes, so it sees it all
    try:
        with_user_hook = generate(model, tokens, interventions, 5, answer_pos=answer_pos)
    finally:
        hook_point.remove_hooks("fwd")
    assert not with_user_hook.used_cache and torch.equal(with_user_hook.tokens, recomputed.tokens)
    for every in (False, True):
        cached = generate(model, tokens, interventions, 5, answer_pos=answer_pos, use_cache=True, every_new_token=every)
        again = generate(model, tokens, interventions, 5, answer_pos=answer_pos, use_cache=False, every_new_token=every)
        assert cached.used_cache and torch.equal(cached.tokens, again.tokens) and cached.writes == again.writes


def test_stop_tokens_end_a_row_and_pad_it(model):
    tokens, answer_pos, _ = prompts()
    free = generate(model, tokens, [], 5, answer_pos=answer_pos, stop_tokens=None)
    stop = int(free.tokens[0, 1])
    out = generate(model, tokens, [], 5, answer_pos=answer_pos, stop_tokens=[stop])
    for row in range(4):
        hits = (free.tokens[row] == stop).nonzero()
        length = int(hits[0]) + 1 if len(hits) else 5
        assert int(out.lengths[row]) == length and bool(out.stopped[row]) == bool(len(hits))
        assert out.tokens[row, :length].tolist() == free.tokens[row, :length].tolist()
        assert (out.tokens[row, length:] == -1).all()
    assert out.tokens.shape[1] == int(out.lengths.max())
    assert int(out.lengths[0]) <= 2
    for none in ([], (), torch.zeros(0, dtype=torch.long)):  # an empty list of stop tokens stops nothing, as None
        assert torch.equal(generate(model, tokens, [], 5, answer_pos=answer_pos, stop_tokens=none).tokens, free.tokens)


def test_icl_batch_inputs_and_token_match(model):
    batch = offset_pool(offsets=(1, 3), n_values=8).sample(3, n_shots=(1, 3), seed=0)
    vec = vector(7)
    out = generate(model, batch, [add(1, vec)], 2)
    manual = generate(model, batch.inputs, [add(1, vec)], 2, answer_pos=batch.answer_pos)
    assert torch.equal(out.tokens, manual.tokens)
    expected = (out.tokens[:, : batch.answers.shape[1]] == batch.answers).all(1).float()
    assert torch.equal(token_match(out, batch.answers), expected)
    assert token_match(out, out.tokens[:, :1]).tolist() == [1.0] * len(batch)
    with pytest.raises(ShapeError, match=r"answers must be integer token ids \[batch=9, n_answer\].*got 'cold'"):
        token_match(out, "cold")  # text answers are exact_match's
    no_answer = batch.answers.clone()
    no_answer[0] = -1
    with pytest.raises(ShapeError, match=r"at least one per prompt, with -1 only as right padding"):
        token_match(out, no_answer)  # was scored 1.0: a row of padding matched anything


def bpe_tokenizer():
    """A small byte-level BPE (GPT-2 style) trained in memory on antonym lines; every string is representable."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<pad>", "<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    raw.train_from_iterator(["hot->cold", "big->small", "up->down", "cold->hot", "small->big"] * 20, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="<pad>", eos_token="<eos>")


def test_texts_exclude_the_stop_token_and_text_prompts_run_end_to_end():
    from tv_lens.tasks import TextPool, TextTask

    tokenizer = bpe_tokenizer()
    model = build_model(tiny_config("bridge", d_vocab=len(tokenizer), n_layers=1))
    encoded = tokenizer(["hot->cold\nbig->", "up->"], padding=True, return_tensors="pt")
    tokens, mask = encoded["input_ids"], encoded["attention_mask"]
    out = generate(model, tokens, [], 3, attention_mask=mask, tokenizer=tokenizer, stop_tokens=None)
    assert out.texts == tuple(tokenizer.decode(row.tolist()) for row in out.tokens)
    first = int(out.tokens[0, 0])
    stopped = generate(model, tokens, [], 3, attention_mask=mask, tokenizer=tokenizer, stop_tokens=first)
    assert stopped.texts is not None and stopped.texts[0] == "" and bool(stopped.stopped[0])
    pool = TextPool(
        (TextTask("antonym", (("hot", "cold"), ("big", "small"), ("up", "down"), ("cold", "hot"))),), tokenizer
    )
    batch = pool.sample(3, n_shots=2, seed=0)
    answers = answer_texts(batch, tokenizer)
    assert set(answers) <= {"cold", "small", "down", "hot"}
    generated = generate(model, batch, [add(0, torch.ones(D_MODEL))], 2, tokenizer=tokenizer)
    assert exact_match(generated, answers).shape == first_word_match(generated, answers).shape == (3,)
    with pytest.raises(ShapeError, match="token_match"):
        exact_match(generate(model, tokens, [], 1, attention_mask=mask), ["a", "b"])


def test_generation_scorings_decode_answers_as_generated_texts_are():
    """A raw ``tokenizers.Tokenizer`` drops special tokens by default; answers keep them, as generated texts do."""
    from text_tokenizers import word_level

    from tv_lens.analyses.generated_scores import GeneratedScores

    tokenizer = word_level()
    cold, unknown = tokenizer.token_to_id("cold"), tokenizer.token_to_id("[UNK]")
    answers = torch.tensor([[cold, unknown], [cold, -1]])
    assert tokenizer.decode([cold, unknown]) == "cold"  # the tokenizer's default, which the scoring used
    scores = GeneratedScores(None, answers, "exact_match", tokenizer, batch_size=2)
    expected = [tokenizer.decode([cold, unknown], skip_special_tokens=False), "cold"]
    assert scores.answers == decoded_answers(answers, tokenizer) == expected and expected[0] != "cold"


def test_a_tiktoken_encoding_decodes_texts_and_answers_and_its_eot_token_stops():
    """tiktoken's ``decode`` takes no ``skip_special_tokens`` and its EOS is ``eot_token`` (a stand-in of its API)."""
    from text_tokenizers import TiktokenLike

    tokenizer = TiktokenLike()
    model = build_model(tiny_config("bridge", dtype="float64", d_vocab=tokenizer.n_vocab, n_layers=1))
    tokens = torch.tensor([tokenizer.encode("hot->cold\nhot->"), tokenizer.encode("cold->hot\ncold->")])
    out = generate(model, tokens, [], 3, tokenizer=tokenizer, stop_tokens=None)
    assert out.texts == tuple(tokenizer.decode(row.tolist()) for row in out.tokens)
    cold, arrow = tokenizer.encode("cold"), tokenizer.encode("->")
    assert decoded_answers(torch.tensor([[*cold, -1], [*cold, *arrow]]), tokenizer) == ["cold", "cold->"]
    first = int(out.tokens[0, 0])
    ends_on_first = TiktokenLike()
    ends_on_first._special_tokens["<|endoftext|>"] = first  # as if the model's first token were <|endoftext|>
    stopped = generate(model, tokens, [], 3, tokenizer=ends_on_first)  # stop_tokens="eos": the eot_token
    assert stopped.texts is not None and stopped.texts[0] == "" and bool(stopped.stopped[0])
    assert int(stopped.lengths[0]) == 1
    without_eot = generate(model, tokens, [], 3, tokenizer=TiktokenLike(special=("<|fim|>",)))  # eot_token: KeyError
    assert without_eot.lengths.tolist() == [3, 3] and not bool(without_eot.stopped.any())


def test_a_generated_id_past_a_tiktoken_encoding_decodes_to_nothing():
    """A ``d_vocab`` padded past the encoding: tiktoken raises ``KeyError`` on such an id; HuggingFace gives ``""``."""
    from text_tokenizers import TiktokenLike

    tokenizer = TiktokenLike()
    model = build_model(tiny_config("bridge", dtype="float64", d_vocab=tokenizer.n_vocab + 4, n_layers=1))
    padded = tokenizer.n_vocab + 2
    push = add(0, model.W_U[:, padded].detach() * 100)  # the first new token: the padding id
    out = generate(model, torch.tensor([tokenizer.encode("hot->")]), [push], 3, tokenizer=tokenizer, stop_tokens=None)
    assert int(out.tokens[0, 0]) == padded
    with pytest.raises(KeyError):
        tokenizer.decode(out.tokens[0].tolist())
    assert out.texts == (tokenizer.decode([t for t in out.tokens[0].tolist() if t < tokenizer.n_vocab]),)


def test_text_scores():
    assert exact_match(["cold\nx", " small ", "dow"], ["cold", "small", "down"]).tolist() == [1.0, 1.0, 0.0]
    assert exact_match(["a b\nc"], [["b", "a b"]]).tolist() == [1.0]
    assert exact_match(["a\nb"], ["a\nb"], until=None).tolist() == [1.0]
    assert first_word_match([" dark blue\n", "", "red", "x"], ["dark", "x", "blue red", [" y", "x z"]]).tolist() == [
        1.0,
        0.0,
        0.0,
        1.0,
    ]
    with pytest.raises(ShapeError, match="one answer"):
        exact_match(["a", "b"], ["a"])
    with pytest.raises(ShapeError, match="strings"):
        exact_match(["a"], [[1]])


def test_no_hooks_are_left_after_an_error_or_a_missed_write(model):
    tokens, answer_pos, _ = prompts()
    before = hook_snapshot(model)
    calls = []

    def fail_on_third_call(activation, hook):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("user hook failed")

    hook_point = model.hook_dict["blocks.0.hook_resid_post"]
    hook_point.add_hook(fail_on_third_call)
    try:
        with_user_hook = hook_snapshot(model)
        with pytest.raises(RuntimeError, match="user hook failed"):
            generate(model, tokens, [replace(1, vector()), ablate_head(1, 0)], 5, answer_pos=answer_pos)
        assert hook_snapshot(model) == with_user_hook  # ours removed, the user's kept
    finally:
        hook_point.remove_hooks("fwd")
    assert hook_snapshot(model) == before
    with pytest.raises(InterventionNotAppliedError, match="wrote to no prompt"):
        generate(model, tokens, [replace(1, vector(), rows=[])], 2, answer_pos=answer_pos)
    assert hook_snapshot(model) == before


BAD_INPUTS = {
    "no new tokens": ({"max_new_tokens": 0}, ShapeError, "max_new_tokens must be an int >= 1"),
    "bool new tokens": ({"max_new_tokens": True}, ShapeError, "max_new_tokens"),
    "past the context": ({"max_new_tokens": N_CTX}, PositionError, "Lower max_new_tokens"),
    "prompt longer than n_ctx": ({"prompts": torch.ones(2, N_CTX + 1, dtype=torch.long)}, PositionError, "n_ctx"),
    "float prompts": ({"prompts": torch.zeros(2, 5, D_MODEL)}, ShapeError, "integer tokens"),
    "zero temperature": ({"do_sample": True, "temperature": 0.0}, ShapeError, "temperature must be"),
    "infinite temperature": ({"do_sample": True, "temperature": float("inf")}, ShapeError, "a finite number > 0"),
    "top_k zero": ({"do_sample": True, "top_k": 0}, ShapeError, "top_k"),
    "use_cache typo": ({"use_cache": "yes"}, ShapeError, "use_cache must be"),
    "stop token outside vocab": ({"stop_tokens": [10_000]}, ShapeError, "stop_tokens must be token ids"),
    "stop tokens as words": ({"stop_tokens": ["\n"]}, ShapeError, "stop_tokens must be 'eos', a token id"),
    "mask as text": ({"attention_mask": "x", "answer_pos": None}, ShapeError, "attention_mask must be a .* 0s and 1s"),
    "one intervention, not a list": ({"interventions": replace(1, torch.zeros(D_MODEL))}, ShapeError, "wrap"),
    "write after the prompt": ({"interventions": [replace(1, torch.zeros(D_MODEL), pos=11)]}, PositionError, "pos"),
    "answer_pos outside": ({"answer_pos": 12}, PositionError, "answer_pos"),
    "batch_size zero": ({"batch_size": 0}, ShapeError, "batch_size"),
    "bad vector": ({"interventions": [add(0, torch.zeros(5))]}, ShapeError, "d_model"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_generation_input_is_a_clear_error(model, case):
    changes, error, message = BAD_INPUTS[case]
    tokens, answer_pos, _ = prompts()
    kwargs = {"prompts": tokens, "interventions": [], "max_new_tokens": 2, "answer_pos": answer_pos, **changes}
    if changes.get("prompts") is not None:
        kwargs.pop("answer_pos")
    with pytest.raises(error, match=message) as raised:
        generate(model, **kwargs)
    assert isinstance(raised.value, TvLensError)


def test_icl_batch_with_its_own_positions_is_an_error(model):
    batch = offset_pool(offsets=(1, 3), n_values=8).sample(2, n_shots=2, seed=0)
    with pytest.raises(ShapeError, match="brings its own"):
        generate(model, batch, [], 2, answer_pos=batch.answer_pos)


LOCAL_MODELS = {
    # id: (architecture, loader, load options)
    "gpt2-bridge": ("gpt2", "bridge", {}),
    "llama-bridge": ("llama", "bridge", {}),
    "gpt_neox-bridge": ("gpt_neox", "bridge", {}),
    "gemma2-bridge": ("gemma2", "bridge", {}),
    "gemma3_text-bridge": ("gemma3_text", "bridge", {}),
    "mistral-bridge": ("mistral", "bridge", {}),
    "mixtral-bridge": ("mixtral", "bridge", {}),
    "llama4_text-bridge": ("llama4_text", "bridge", {}),  # chunked attention, a layer without rotary positions
    # HookedTransformer (TransformerLens <= 3): its own KV cache; Qwen2's BOS doubles as the pad token
    "llama-hooked": ("llama", "hooked", {}),
    "mistral-hooked": ("mistral", "hooked", {}),  # a sliding window over its KV cache
    "phi3-hooked": ("phi3", "hooked", {}),
    "gpt_oss-hooked": ("gpt_oss", "hooked", {}),  # attention sinks and a sliding window over its KV cache
    "qwen2-hooked-bos-pad": ("qwen2", "hooked", {"padding_side": "left", "bos_as_pad": True}),
}


@pytest.fixture(scope="module", params=sorted(LOCAL_MODELS))
def local_model(request, tmp_path_factory):
    """A small random HuggingFace architecture booted through TransformerLens (skipped where it cannot be)."""
    local_hf = pytest.importorskip("tv_lens.models.local_hf")
    from tv_lens.models.builders import BackendUnavailableError

    arch, loader, options = LOCAL_MODELS[request.param]
    folder = tmp_path_factory.getbasetemp() / "generation-local" / arch
    folder = local_hf.build_local_model(arch, folder, n_layers=2, d_model=32, vocab_size=300, n_ctx=64)
    try:
        return local_hf.load_local_model(folder, loader, **options)
    except BackendUnavailableError as error:
        pytest.skip(str(error))


def test_local_architectures_match_the_loop_and_the_cache(local_model):
    """Rotary positions, grouped-query attention, sliding windows; the KV path where the cache is verified."""
    tokenizer = local_model.tokenizer
    texts = ["hot -> cold\nbig ->", "up ->", "old -> new\nfast -> slow\nhigh -> low\nwet ->"]
    encoded = [tokenizer(texts, padding=True, return_tensors="pt", padding_side=side) for side in ("right", "left")]
    (tokens, mask), (left, left_mask) = [(e["input_ids"], e["attention_mask"]) for e in encoded]
    assert (tokens[:, 0] == tokenizer.bos_token_id).all()
    value = torch.randn(local_model.cfg.d_model, generator=torch.Generator().manual_seed(0)) * 4
    options = {"stop_tokens": None, "max_new_tokens": 4}
    out = generate(local_model, tokens, [replace(0, value)], attention_mask=mask, **options)
    recomputed = generate(local_model, tokens, [replace(0, value)], attention_mask=mask, use_cache=False, **options)
    from_left = generate(local_model, left, [replace(0, value)], attention_mask=left_mask, **options)
    assert out.used_cache == (kv_cache_support(local_model) is not None)
    assert torch.equal(out.tokens, recomputed.tokens) and torch.equal(out.tokens, from_left.tokens)
    assert out.texts == tuple(tokenizer.decode(row.tolist()) for row in out.tokens)
    lengths = mask.sum(1)

    def hooks(n):
        return [("blocks.0.hook_resid_post", writer("replace", lambda width: [n - 1], value))]

    for row in (1, 2):
        assert out.tokens[row].tolist() == reference(local_model, tokens[row, : lengths[row]].tolist(), 4, hooks)


def test_the_cache_keyword_transformers_deprecates_warns_no_one(tmp_path):
    """The bridge passes HuggingFace the cache as ``past_key_values`` (deprecated in transformers 5): no warning
    about that call of tv_lens's reaches the user, whose warnings may be errors."""
    local_hf = pytest.importorskip("tv_lens.models.local_hf")
    from tv_lens.models import hooked_transformer_available

    folder = local_hf.build_local_model("gpt_neox", tmp_path / "neox", n_layers=2, d_model=32, vocab_size=300, n_ctx=64)
    model = local_hf.load_local_model(folder, "bridge")
    tokens = model.tokenizer(["hot -> cold\nbig ->", "up ->"], padding=True, return_tensors="pt")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kind = kv_cache_support(model)
        out = generate(model, tokens["input_ids"], [], attention_mask=tokens["attention_mask"], max_new_tokens=3)
    assert kind == (None if hooked_transformer_available() else "hf")  # the 3.9 bridge's forward takes no cache
    assert out.used_cache == (kind is not None)


def test_a_plain_pytorch_hook_of_the_users_is_seen_like_a_hook_points(tmp_path):
    """A ``register_forward_hook`` on a block (as steering libraries attach them) is a hook of the user's: the KV-cache
    check sets it aside, so the finding survives it, and ``use_cache="auto"`` recomputes while it is attached."""
    local_hf = pytest.importorskip("tv_lens.models.local_hf")
    from tv_lens.models import hooked_transformer_available

    folder = local_hf.build_local_model("gpt_neox", tmp_path / "neox", n_layers=2, d_model=32, vocab_size=300, n_ctx=64)
    model = local_hf.load_local_model(folder, "hooked" if hooked_transformer_available() else "bridge")
    tokens = model.tokenizer(["hot -> cold\nbig ->", "up ->"], padding=True, return_tensors="pt")
    value = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(0)) * 8

    def last_token(module, inputs, output):  # writes at the last position of every pass
        hidden = output[0] if isinstance(output, tuple) else output
        hidden = hidden.clone()
        hidden[:, -1] += value
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    options = {"attention_mask": tokens["attention_mask"], "max_new_tokens": 4, "stop_tokens": None}
    handle = model.blocks[0].register_forward_hook(last_token)
    try:
        auto = generate(model, tokens["input_ids"], [], **options)
        recomputed = generate(model, tokens["input_ids"], [], use_cache=False, **options)
        assert len(model.blocks[0]._forward_hooks) == 1  # left alone
    finally:
        handle.remove()
    assert not auto.used_cache and torch.equal(auto.tokens, recomputed.tokens)
    assert kv_cache_support(model) is not None  # checked with the hook attached, set aside for the check
    assert generate(model, tokens["input_ids"], [], **options).used_cache


def test_a_users_hook_that_indexes_positions_sees_each_prompt_unpadded(model):
    """Recomputing with a hook of the caller's attached, each pass holds prompts of one length: a hook that writes
    at the last position writes at each prompt's own last token, as in a loop over the prompts one at a time."""
    tokens, answer_pos, lengths = prompts(4, 12, seed=2)
    value = vector(7, 1.0)

    def last_position(activation, hook):
        activation = activation.clone()
        activation[:, -1] += value
        return activation

    hook_point = model.hook_dict["blocks.0.hook_resid_post"]
    hook_point.add_hook(last_position)
    try:
        out = generate(model, tokens, [add(1, vector(8))], 4, answer_pos=answer_pos)
        one_by_one = generate(model, tokens, [add(1, vector(8))], 4, answer_pos=answer_pos, batch_size=1)
    finally:
        hook_point.remove_hooks("fwd")
    assert not out.used_cache and torch.equal(out.tokens, one_by_one.tokens)

    def hooks(n):  # the reference adds the user's hook itself
        return [
            ("blocks.0.hook_resid_post", last_position),
            ("blocks.1.hook_resid_post", writer("add", lambda width: [n - 1], vector(8))),
        ]

    for row in range(4):
        assert out.tokens[row].tolist() == reference(model, tokens[row, : lengths[row]].tolist(), 4, hooks)
