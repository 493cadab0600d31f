r"""Small randomly initialised HuggingFace models of real architectures, built and loaded offline.

Pretrained language models differ from the GPT-2-style models tv_lens trains in ways that matter to hooks:
rotary positions, grouped-query attention, parallel attention and MLP, RMSNorm, soft-capped logits, sliding-window
attention, query/key norms, fused weights. :func:`build_local_model` writes a small model of a real architecture
with ``transformers`` from a config (random weights, no download) and a byte-level BPE tokenizer trained on a
built-in English corpus with the ``tokenizers`` package, both with ``save_pretrained``; :func:`load_local_model`
boots the folder through TransformerLens as a ``TransformerBridge`` (any TransformerLens ≥ 3) or a
``HookedTransformer`` (TransformerLens ≤ 3, for the architectures it can convert from a config).

The parts: the tokenizer and its corpus (:mod:`tv_lens.models.local_hf.tokenizer`), the build
(:mod:`tv_lens.models.local_hf.build`) and the loaders (:mod:`tv_lens.models.local_hf.load`).

Architectures (:data:`ARCHITECTURES`):

- ``"gpt2"``: ``GPT2LMHeadModel`` (learned positions, LayerNorm, GELU MLP, tied unembedding).
- ``"gpt_neox"``: ``GPTNeoXForCausalLM`` in Pythia's layout (parallel attention and MLP, partial rotary).
- ``"llama"``: ``LlamaForCausalLM`` (RoPE, RMSNorm, gated MLP, grouped-query attention).
- ``"qwen2"``: ``Qwen2ForCausalLM`` (like Llama, with query/key/value biases and grouped-query attention).
- ``"gemma2"``: ``Gemma2ForCausalLM`` (attention and final-logit soft-capping, sliding-window attention on
  alternate layers, pre- and post-norms around attention and MLP, grouped-query attention).
- ``"qwen3"``: ``Qwen3ForCausalLM`` (like Qwen2 without the biases, with RMSNorm on each head's queries and keys).
- ``"gemma3_text"``: ``Gemma3ForCausalLM`` (Gemma-2's norms, query/key norms instead of soft-capping, sliding and
  global attention layers with their own rotary bases).
- ``"mistral"``: ``MistralForCausalLM`` (Llama with sliding-window attention on every layer).
- ``"phi3"``: ``Phi3ForCausalLM`` (one fused query/key/value weight and one fused gate/up weight).
- ``"olmo2"``: ``Olmo2ForCausalLM`` (norms after attention and MLP instead of before, RMSNorm on the whole
  query and key vectors).
- ``"mixtral"``: ``MixtralForCausalLM`` (Mistral's attention; a mixture of 4 experts, 2 per token, in place of
  the MLP).
- ``"qwen3_moe"``: ``Qwen3MoeForCausalLM`` (Qwen3's attention; a mixture of 4 experts, 2 per token).
- ``"gpt_oss"``: ``GptOssForCausalLM`` (attention sinks, biases on every projection, sliding and global layers,
  YaRN rotary positions; a mixture of 4 experts, 2 per token).
- ``"llama4_text"``: ``Llama4ForCausalLM`` (attention in chunks with rotary positions, then a global layer without
  them; query/key norms; a mixture of 4 experts, 1 per token, beside a shared expert).
- ``"olmo3"``: ``Olmo3ForCausalLM`` (OLMo-2's layout with sliding and global layers).
- ``"smollm3"``: ``SmolLM3ForCausalLM`` (Llama's layout; every other layer without rotary positions).
- ``"gptj"``: ``GPTJForCausalLM`` (attention and MLP in parallel, rotary on part of each head, an unembedding with a
  bias; Todd et al.'s and Hendel et al.'s model).
- ``"gpt_neo"``: ``GPTNeoForCausalLM`` (learned positions; global and local, sliding-window, attention alternating).

All but GPT-2, GPT-NeoX, GPT-J and GPT-Neo get grouped-query attention (half as many key/value heads as query
heads), and every sliding window and attention chunk (8 tokens) is shorter than a test prompt, so it masks keys.

The tokenizer has ``<|pad|>``, ``<|bos|>`` and ``<|eos|>`` special tokens (ids 0, 1, 2) and learns whole words
with their leading space (``" cold"``), the ``"->"`` and newline of ICL prompts and pieces of binary strings.

>>> import tempfile
>>> from pathlib import Path
>>> with tempfile.TemporaryDirectory() as tmp:
...     model = load_local_model(build_local_model("llama", Path(tmp) / "llama"), "bridge")
>>> tokens = model.tokenizer("hot->cold\nbig->", return_tensors="pt")["input_ids"]  # BOS first
>>> model.tokenizer.convert_ids_to_tokens(tokens[0])
['<|bos|>', 'hot', '->', 'cold', 'Ċ', 'big', '->']
>>> model(tokens).shape, model.cfg.n_heads, model.cfg.n_key_value_heads
(torch.Size([1, 7, 1024]), 4, 2)
"""

from tv_lens.models.local_hf.build import ARCHITECTURES, build_local_model, local_model_settings
from tv_lens.models.local_hf.load import LOADERS, load_local_model
from tv_lens.models.local_hf.tokenizer import build_tokenizer

__all__ = [
    "ARCHITECTURES",
    "LOADERS",
    "build_local_model",
    "build_tokenizer",
    "load_local_model",
    "local_model_settings",
]
