"""Free-running generation with task vectors (or any intervention) written into the prompt.

:func:`generate` continues each prompt greedily or by sampling, with every intervention made by
:func:`~tv_lens.interventions.replace`, :func:`~tv_lens.interventions.add` or
:func:`~tv_lens.interventions.ablate_head` written at its position in the prompt (``pos="answer"``: the
prompt's last token, where a task vector is read and injected). A write lands on the prompt once and not on the
generated tokens; ``every_new_token=True`` also writes it at every generated position. The prompt of row ``i``
is its tokens up to and including ``answer_pos[i]``; anything after it (e.g. the answer tokens of an
:class:`~tv_lens.tasks.ICLBatch`) is ignored.

Guarantees:

- Left-padded, right-padded and unpadded prompts give the same continuations (prompts are aligned to start at
  column 0 first, so no model ever sees a pad token before a real one).
- Sampling is reproducible per prompt: the ``k``-th token of prompt ``i`` uses the uniform draw ``u[i, k]`` of
  ``torch.rand(n_prompts, max_new_tokens, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)``
  (inverse-CDF sampling of the tempered, top-k filtered distribution), so the result does not depend on batch
  size, padding or the KV-cache path.
- Every intervention counts the prompts it wrote to; one that wrote to none raises
  :class:`~tv_lens.errors.InterventionNotAppliedError`.
- The hooks are attached for the call only and removed also when an error is raised; hooks the user attached
  are left alone.

**KV cache.** Where the model's own cache is verified to reproduce its full forward pass (checked once per model
on a short random prompt: :func:`kv_cache_support`), each step runs only the new token: a ``HookedTransformer``
(``past_kv_cache``) and a ``TransformerBridge`` whose HuggingFace cache works through the bridge
(``past_key_values``; with ``transformers`` 5 this holds for some architectures only). Otherwise every step
recomputes the whole prefix, and a position-specific write simply happens again at the same prompt position,
which equals writing it once with a cache. With the cache, all prompts of a batch advance one position per
step from the shortest prompt's end (a longer prompt's next token is its own), so no padding is ever needed.
While hooks of the caller's are attached to the model, ``use_cache="auto"`` recomputes, so that those hooks see
whole sequences as in a plain forward pass, each prompt's own: the passes then hold prompts of one length, never
padding.

>>> import torch
>>> from tv_lens.interventions import add
>>> from tv_lens.models import ModelConfig, build_model
>>> model = build_model(ModelConfig(d_vocab=16, n_layers=2, d_model=32, n_heads=4, n_ctx=32))
>>> prompts = torch.randint(0, 16, (3, 8))
>>> out = generate(model, prompts, [add(1, torch.ones(32))], max_new_tokens=4)
>>> out.tokens.shape, out.lengths.tolist(), out.writes
(torch.Size([3, 4]), [4, 4, 4], (3,))
"""

from tv_lens.generation.continuation import Generation, generate
from tv_lens.generation.kv_cache import kv_cache_support
from tv_lens.generation.matching import answer_texts, exact_match, first_word_match, token_match

__all__ = [
    "Generation",
    "answer_texts",
    "exact_match",
    "first_word_match",
    "generate",
    "kv_cache_support",
    "token_match",
]
