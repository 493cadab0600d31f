"""A finetuned bridge written back as Hugging Face files, against the Hugging Face model edited by hand.

The reference is the architecture's own Hugging Face model with each update written into its layers by hand
(``edit_huggingface``: fused ``c_attn``, head-interleaved ``query_key_value``, fused ``qkv_proj`` / ``gate_up_proj``
included): the exported folder must hold exactly its weights, whether the bridge was finetuned with LoRA (adapters
still attached) or in full (its own layers edited).
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import BACKENDS
from lora_helpers import (
    GATED,
    TOKENS,
    adapted,
    assert_same_weights,
    edit_huggingface,
    edit_transformer_lens,
    huggingface,
    logits,
)
from pretrained_helpers import (
    load,
    loaded,
    one_thread,  # noqa: F401  (autouse: tiny models run on one thread)
)
from training_helpers import tiny_model

from tv_lens.errors import ConfigError, ModelNotSupportedError
from tv_lens.models.local_hf import ARCHITECTURES
from tv_lens.training import export_huggingface
from tv_lens.training.lora import has_lora


@pytest.mark.parametrize("finetuning", ["lora", "full"])
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_the_exported_folder_holds_the_huggingface_model_with_the_update_in_its_weights(
    tmp_path_factory, tmp_path, arch, finetuning
):
    pretrained = loaded(tmp_path_factory, arch, "bridge")
    model, deltas = adapted(pretrained.model, arch)
    if finetuning == "full":  # the same updates written into the bridge's own layers, no adapters
        model = copy.deepcopy(pretrained.model)
        for block, target, delta in deltas:
            edit_transformer_lens(model, block, target, delta)
    before = logits(model)
    reference = huggingface(pretrained.folder)
    for block, target, delta in deltas:
        edit_huggingface(reference, arch, block, target, delta)

    folder = export_huggingface(model, tmp_path / "tuned")

    exported = huggingface(folder)
    assert_same_weights(exported, reference)
    with torch.no_grad():
        torch.testing.assert_close(exported(TOKENS).logits.double(), before, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(before, logits(pretrained.model), atol=1e-5, rtol=1e-5)  # the updates change it
    torch.testing.assert_close(logits(model), before, atol=0, rtol=0)  # the bridge is left as it was
    assert has_lora(model) == (finetuning == "lora")


def test_the_exported_folder_boots_as_a_bridge_with_the_same_tokenizer(tmp_path_factory, tmp_path):
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import PreTrainedTokenizerFast

    pretrained = loaded(tmp_path_factory, "gpt_neox", "bridge")
    model, _ = adapted(pretrained.model, "gpt_neox")
    folder = export_huggingface(model, tmp_path / "tuned")

    tokenizer = PreTrainedTokenizerFast.from_pretrained(folder, add_bos_token=True)
    text = "hot->cold\nbig->small\nup->"
    assert tokenizer(text)["input_ids"] == pretrained.tokenizer(text)["input_ids"]
    booted = TransformerBridge.boot_transformers(str(folder), tokenizer=tokenizer).eval()
    torch.testing.assert_close(logits(booted), logits(model), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_model_that_wraps_no_huggingface_model_is_refused(tmp_path, backend):
    with pytest.raises(
        ModelNotSupportedError, match=r"wraps none\. A HookedTransformer holds TransformerLens's processed weights"
    ):
        export_huggingface(tiny_model(backend), tmp_path / "tuned")
    assert not (tmp_path / "tuned").exists()


def test_a_folder_that_holds_anything_is_refused_and_left_as_it_was(tmp_path_factory, tmp_path):
    model = loaded(tmp_path_factory, "llama", "bridge").model
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    (tmp_path / "file").write_text("mine too")
    for taken in ("full", "file"):
        with pytest.raises(ConfigError, match="is not an empty folder; export writes a new folder"):
            export_huggingface(model, tmp_path / taken)
    assert (tmp_path / "full" / "notes.txt").read_text() == "mine"
    assert (tmp_path / "file").read_text() == "mine too"
    (tmp_path / "empty").mkdir()
    assert (export_huggingface(model, tmp_path / "empty") / "config.json").is_file()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["empty", "file", "full"]  # no staging folder left


def test_weights_that_do_not_compute_what_the_bridge_computes_are_not_written(tmp_path_factory, tmp_path, monkeypatch):
    from tv_lens.training import export

    model, _ = adapted(loaded(tmp_path_factory, "gpt_neox", "bridge").model, "gpt_neox")
    monkeypatch.setattr(export, "_fuse", lambda split, weights: None)  # the fused weights stay stale
    with pytest.raises(ModelNotSupportedError, match="does not compute what the bridge computes"):
        export_huggingface(model, tmp_path / "tuned")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("arch", GATED)
def test_compatibility_mode_is_written_only_where_it_left_the_huggingface_weights(tmp_path_factory, tmp_path, arch):
    model, _ = adapted(loaded(tmp_path_factory, arch, "bridge-compat").model, arch)
    try:
        folder = export_huggingface(model, tmp_path / "tuned")
    except ModelNotSupportedError as error:  # TransformerLens 3 folds the norms into the weights
        assert "Compatibility mode processed the bridge's weights" in str(error)
        assert list(tmp_path.iterdir()) == []
        return
    with torch.no_grad():
        torch.testing.assert_close(huggingface(folder)(TOKENS).logits.double(), logits(model), atol=1e-5, rtol=1e-5)


def test_the_users_hooks_neither_change_the_export_nor_are_removed(tmp_path_factory, tmp_path):
    model, _ = adapted(loaded(tmp_path_factory, "llama", "bridge").model, "llama")
    plain = logits(model)
    model.blocks[0].hook_resid_post.add_hook(lambda resid, hook: resid + 1.0)
    hooked = logits(model)
    assert not torch.allclose(hooked, plain)
    folder = export_huggingface(model, tmp_path / "tuned")
    with torch.no_grad():
        torch.testing.assert_close(huggingface(folder)(TOKENS).logits.double(), plain, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits(model), hooked, atol=0, rtol=0)


def test_a_bfloat16_bridge_is_written_in_bfloat16(tmp_path_factory, tmp_path):
    from transformers import AutoModelForCausalLM

    bridge = load(loaded(tmp_path_factory, "qwen2", "bridge").folder, "bridge", dtype=torch.bfloat16)
    model, _ = adapted(bridge, "qwen2")
    folder = export_huggingface(model, tmp_path / "tuned")
    exported = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16, attn_implementation="eager").eval()
    assert {t.dtype for t in exported.state_dict().values()} == {torch.bfloat16}
    with torch.no_grad():
        found = exported(TOKENS).logits.double()
    torch.testing.assert_close(found, logits(model), atol=2e-2 * logits(model).abs().max().item(), rtol=0)
