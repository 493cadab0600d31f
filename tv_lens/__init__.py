"""tv_lens: task vectors in in-context learning, measured on TransformerLens models."""

from tv_lens.errors import TvLensError

__all__ = ["TvLensError"]
__version__ = "0.1.0"
