"""Pagoda: a tier-aware KV-cache store for LLM inference.

- ``Client``: the client of a ``pagodad`` service (put / get / lookup pages).
- ``Store``: an embedded page store in this process.
- ``DecodeWorker``: Pagoda's decode path as an attention backend over torch tensors
  (see the README section "Use Pagoda from a PyTorch model" and bench/e2e/llama_runner.py).
- ``StatusError`` (``.code``, ``.message``) and ``InvalidArgumentError`` (also a ``ValueError``).
"""

from ._pagoda import (
    Client,
    DecodeWorker,
    InvalidArgumentError,
    OpenedSequence,
    StatusError,
    StepPlan,
    StepStats,
    Store,
    chain_keys,
    layout_id,
    page_bytes,
)

__all__ = [
    "Client",
    "DecodeWorker",
    "InvalidArgumentError",
    "OpenedSequence",
    "StatusError",
    "StepPlan",
    "StepStats",
    "Store",
    "chain_keys",
    "layout_id",
    "page_bytes",
]
