"""A PEFT LoRA adapter, made and saved by PEFT itself, put on a bridge: it computes what PEFT's model computes."""

from __future__ import annotations

import copy
import json
import warnings

import pytest
import torch
from lora_helpers import TOKENS, huggingface, logits, peft_adapter
from pretrained_helpers import (
    loaded,
    one_thread,  # noqa: F401  (autouse: tiny models run on one thread)
)

from tv_lens.errors import ArtefactError, ConfigError, MissingFileError, ModelNotSupportedError
from tv_lens.models.local_hf import ARCHITECTURES
from tv_lens.training import export_lora_adapter, load_lora_adapter, remove_lora
from tv_lens.training.lora import has_lora


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_a_peft_adapter_on_the_bridge_computes_what_peft_computes(tmp_path_factory, tmp_path, arch):
    pretrained = loaded(tmp_path_factory, arch, "bridge")
    tuned = peft_adapter(arch, pretrained.folder, tmp_path / "adapter")
    with torch.no_grad():
        expected = tuned(TOKENS).logits.double()
    bridge = copy.deepcopy(pretrained.model)

    updates = load_lora_adapter(bridge, tmp_path / "adapter")

    torch.testing.assert_close(logits(bridge), expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(expected, logits(pretrained.model), atol=1e-5, rtol=1e-5)
    assert {update.lora_A.shape[1] for update in updates} == {2, 3}  # the rank pattern kept
    again = export_lora_adapter(bridge, tmp_path / "again")  # and written back, PEFT reads the same model
    from peft import PeftModel

    with torch.no_grad():
        reread = PeftModel.from_pretrained(huggingface(pretrained.folder), again).eval()(TOKENS).logits.double()
    torch.testing.assert_close(reread, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits(remove_lora(bridge)), logits(pretrained.model), atol=0, rtol=0)


@pytest.fixture
def adapter(tmp_path_factory, tmp_path):
    """A saved PEFT adapter of the Llama test model, and a fresh bridge of it."""
    pretrained = loaded(tmp_path_factory, "llama", "bridge")
    peft_adapter("llama", pretrained.folder, tmp_path / "adapter")
    return tmp_path / "adapter", copy.deepcopy(pretrained.model)


def rewrite_config(folder, **changes) -> None:
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps(config | changes))


def test_an_rslora_adapter_computes_what_peft_computes(tmp_path_factory, tmp_path):
    """rsLoRA scales B A by alpha / sqrt(r), not alpha / r (ranks 2 and 3 here, so the two scales differ)."""
    pretrained = loaded(tmp_path_factory, "llama", "bridge")
    tuned = peft_adapter("llama", pretrained.folder, tmp_path / "adapter", use_rslora=True)
    with torch.no_grad():
        expected = tuned(TOKENS).logits.double()
    bridge = copy.deepcopy(pretrained.model)
    load_lora_adapter(bridge, tmp_path / "adapter")
    torch.testing.assert_close(logits(bridge), expected, atol=1e-5, rtol=1e-5)


def test_an_adapter_of_another_kind_is_refused(adapter):
    folder, bridge = adapter
    rewrite_config(folder, use_dora=True)
    with pytest.raises(ConfigError, match=r"The adapter uses \['use_dora'\], which compute something else"):
        load_lora_adapter(bridge, folder)
    rewrite_config(folder, use_dora=False, peft_type="IA3")
    with pytest.raises(ArtefactError, match="is not the config of a PEFT LoRA adapter"):
        load_lora_adapter(bridge, folder)
    assert not has_lora(bridge)


def test_an_adapter_of_a_layer_the_model_lacks_attaches_nothing(adapter):
    from safetensors.torch import load_file, save_file

    folder, bridge = adapter
    weights = load_file(str(folder / "adapter_model.safetensors"))
    renamed = {key.replace("layers.1.self_attn.o_proj", "layers.7.self_attn.o_proj"): t for key, t in weights.items()}
    save_file(renamed, str(folder / "adapter_model.safetensors"))
    with pytest.raises(ModelNotSupportedError, match=r"adapts model\.layers\.7\.self_attn\.o_proj, which is not"):
        load_lora_adapter(bridge, folder)
    assert not has_lora(bridge)  # the layers attached before the bad one were taken off again


def test_missing_files_and_a_model_with_adapters_are_refused(adapter, tmp_path):
    folder, bridge = adapter
    with pytest.raises(MissingFileError, match=r"adapter_config\.json does not exist; a PEFT adapter folder holds"):
        load_lora_adapter(bridge, tmp_path / "nowhere")
    load_lora_adapter(bridge, folder)
    with pytest.raises(ConfigError, match="The model already has LoRA adapters"):
        load_lora_adapter(bridge, folder)


def test_pieces_given_the_wrong_rows_are_caught_and_taken_off(tmp_path_factory, tmp_path, monkeypatch):
    from tv_lens.training import lora_import

    pretrained = loaded(tmp_path_factory, "gpt_neox", "bridge")
    peft_adapter("gpt_neox", pretrained.folder, tmp_path / "adapter")
    bridge = copy.deepcopy(pretrained.model)
    wrong = lora_import.fused_rows
    monkeypatch.setattr(lora_import, "fused_rows", lambda split, index: wrong(split, index).flip(0))
    with pytest.raises(ModelNotSupportedError, match=r"query_key_value with is not its base weight plus"):
        load_lora_adapter(bridge, tmp_path / "adapter")
    assert not has_lora(bridge)
    torch.testing.assert_close(logits(bridge), logits(pretrained.model), atol=0, rtol=0)


def test_an_adapter_of_another_model_size_or_settings_is_refused(adapter):
    from safetensors.torch import load_file, save_file

    folder, bridge = adapter
    rewrite_config(folder, lora_dropout="none")
    with pytest.raises(ConfigError, match="dropout"):
        load_lora_adapter(bridge, folder)
    rewrite_config(folder, lora_dropout=0.0)
    weights = load_file(str(folder / "adapter_model.safetensors"))
    key = "base_model.model.model.layers.0.mlp.down_proj.lora_A.weight"
    save_file(weights | {key: weights[key][:, :-1].contiguous()}, str(folder / "adapter_model.safetensors"))
    with pytest.raises(ModelNotSupportedError, match=r"down_proj map \d+ features to 64, and the layer maps"):
        load_lora_adapter(bridge, folder)
    assert not has_lora(bridge)


def _trained_pissa(folder, saved, convert: bool):
    """A PiSSA adapter of the Llama test model, moved off its start as training would, saved by PEFT.

    PiSSA takes the weights' principal components out of the base weights into ``B A``, so the adapter belongs to
    that modified base, unless saved with ``path_initial_model_for_weight_conversion`` (then a plain LoRA of twice
    the rank on the original weights). Returns PEFT's logits of the adapted model.
    """
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(
        huggingface(folder), LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights="pissa")
    )
    initial = None
    if convert:  # PEFT's recipe: the starting adapter saved as a plain one, then converted against
        initial = saved.parent / "initial"
        model.peft_config["default"].init_lora_weights = True
        model.save_pretrained(initial)
        model.peft_config["default"].init_lora_weights = "pissa"
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_" in name:
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.1)
        expected = model.eval()(TOKENS).logits.double()
    with warnings.catch_warnings():  # PEFT warns that PiSSA should not meet other adapters (it loads the initial one)
        warnings.simplefilter("ignore", UserWarning)
        model.save_pretrained(saved, path_initial_model_for_weight_conversion=initial)
    return expected


def test_an_adapter_of_a_base_its_initialisation_changed_is_refused_and_its_conversion_loads(
    tmp_path_factory, tmp_path
):
    """PiSSA (and OLoRA, CorDA, LoftQ, LoRA-GA) adapters need the base weights their start left; PEFT converts them."""
    pretrained = loaded(tmp_path_factory, "llama", "bridge")
    _trained_pissa(pretrained.folder, tmp_path / "pissa", convert=False)
    bridge = copy.deepcopy(pretrained.model)
    with pytest.raises(ConfigError, match=r"init_lora_weights='pissa'.*path_initial_model_for_weight_conversion"):
        load_lora_adapter(bridge, tmp_path / "pissa")
    assert not has_lora(bridge)
    expected = _trained_pissa(pretrained.folder, tmp_path / "converted", convert=True)
    load_lora_adapter(bridge, tmp_path / "converted")
    torch.testing.assert_close(logits(bridge), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "option",
    [
        {"alora_invocation_tokens": [5, 6]},
        {"layer_replication": [[0, 2], [1, 2]]},
        {"use_bdlora": {"nblocks": 2}},
        {"arrow_config": {"top_k": 2}},
        {"kasa_config": {"gamma": 0.1}},
        {"use_qalora": True},
    ],
)
def test_a_lora_variant_that_computes_something_else_is_refused(adapter, option):
    folder, bridge = adapter
    rewrite_config(folder, **option)
    with pytest.raises(ConfigError, match=rf"The adapter uses \['{next(iter(option))}'\], which compute something"):
        load_lora_adapter(bridge, folder)
    assert not has_lora(bridge)
