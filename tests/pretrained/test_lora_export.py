"""A bridge's LoRA adapters written as a PEFT adapter, loaded by PEFT onto the base model it was booted from.

The reference is independent of tv_lens twice over: PEFT itself puts the adapter on the Hugging Face model, and the
merged result must hold the weights of the Hugging Face model with each update written into its layers by hand
(``edit_huggingface``: fused ``c_attn``, head-interleaved ``query_key_value``, fused ``qkv_proj`` / ``gate_up_proj``
included).
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import BACKENDS
from lora_helpers import TOKENS, adapted, assert_same_weights, edit_huggingface, huggingface, logits
from pretrained_helpers import (
    loaded,
    one_thread,  # noqa: F401  (autouse: tiny models run on one thread)
)
from training_helpers import tiny_model

from tv_lens.errors import ConfigError, ModelNotSupportedError
from tv_lens.models.local_hf import ARCHITECTURES
from tv_lens.training import LoRAConfig, apply_lora, export_lora_adapter
from tv_lens.training.lora import has_lora


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_the_peft_adapter_on_the_base_model_is_the_finetuned_bridge(tmp_path_factory, tmp_path, arch):
    from peft import PeftModel

    pretrained = loaded(tmp_path_factory, arch, "bridge")
    model, deltas = adapted(pretrained.model, arch)
    before = logits(model)

    folder = export_lora_adapter(model, tmp_path / "adapter")

    assert sorted(path.name for path in folder.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(pretrained.folder)
    tuned = PeftModel.from_pretrained(huggingface(pretrained.folder), folder).eval()
    with torch.no_grad():
        torch.testing.assert_close(tuned(TOKENS).logits.double(), before, atol=1e-5, rtol=1e-5)
    reference = huggingface(pretrained.folder)
    for block, target, delta in deltas:
        edit_huggingface(reference, arch, block, target, delta)
    assert_same_weights(tuned.merge_and_unload(), reference)
    torch.testing.assert_close(logits(model), before, atol=0, rtol=0)  # the bridge is left as it was
    assert has_lora(model)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_model_that_wraps_no_huggingface_model_is_refused(tmp_path, backend):
    model = tiny_model(backend)
    apply_lora(model, (0,), LoRAConfig(rank=2))
    with pytest.raises(ModelNotSupportedError, match=r"Export writes the Hugging Face model a TransformerBridge wraps"):
        export_lora_adapter(model, tmp_path / "adapter")
    assert list(tmp_path.iterdir()) == []


def test_a_model_without_adapters_is_refused(tmp_path_factory, tmp_path):
    model = loaded(tmp_path_factory, "llama", "bridge").model
    with pytest.raises(ConfigError, match="The model has no LoRA adapters to export; finetune it with a LoRAConfig"):
        export_lora_adapter(model, tmp_path / "adapter")
    assert list(tmp_path.iterdir()) == []


def test_a_piece_finetuned_besides_its_adapter_is_refused(tmp_path_factory, tmp_path):
    """GPT-NeoX's query piece is the bridge's own copy: a change to its base weight is not in the fused layer."""
    model, _ = adapted(loaded(tmp_path_factory, "gpt_neox", "bridge").model, "gpt_neox")
    with torch.no_grad():
        model.blocks[0].attn.q.original_component.parametrizations.weight.original.add_(0.01)
    with pytest.raises(ModelNotSupportedError, match="is not its base weight plus"):
        export_lora_adapter(model, tmp_path / "adapter")
    assert list(tmp_path.iterdir()) == []
