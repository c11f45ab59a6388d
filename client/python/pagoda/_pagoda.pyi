# Type stubs of pagoda's native module (client/python/*.cc).
from typing import Any, Dict, List, Optional, Sequence, Tuple

class StatusError(RuntimeError):
    """A Pagoda call failed; .code is the status code name ('NOT_FOUND', 'DATA_LOSS', ...)."""

    code: str
    message: str

class InvalidArgumentError(StatusError, ValueError):
    """Bad input (code 'INVALID_ARGUMENT'); nothing changed."""

class Client:
    def __init__(
        self,
        target: str = "127.0.0.1:50051",
        tenant: str = "default",
        token: str = "",
        path: str = "auto",
        local_socket: str = "",
        timeout_s: float = 30.0,
    ) -> None: ...
    @property
    def data_path(self) -> str: ...
    def put(
        self, keys: Sequence[int], pages: Any, layout: int, raise_on_error: bool = True
    ) -> List[str]: ...
    def get(self, keys: Sequence[int], layout: int) -> Tuple[Any, List[bool]]: ...
    def get_into(self, keys: Sequence[int], out: Any) -> List[bool]: ...
    def exists(self, keys: Sequence[int]) -> List[bool]: ...
    def longest_prefix(self, keys: Sequence[int]) -> int: ...
    def remove(self, keys: Sequence[int]) -> List[str]: ...
    def stats(self) -> Dict[str, Any]: ...

def layout_id(
    dtype: str = "fp16", kv_heads: int = 8, head_dim: int = 128, page_tokens: int = 16
) -> int: ...
def page_bytes(layout: int) -> int: ...
def chain_keys(
    tokens: Sequence[int], page_tokens: int = 16, model: str = "", layer: int = 0, salt: str = ""
) -> List[int]: ...

class Store:
    """An embedded page store in this process (host arena; SSD tier under data_dir)."""

    def __init__(
        self,
        *,
        host_capacity_bytes: int = 1 << 30,
        data_dir: str = "",
        layouts: Sequence[int],
        ssd_capacity_bytes: int = 0,
        segment_bytes: int = 4 << 20,
        ssd_sync_writes: bool = False,
    ) -> None: ...
    def stats(self) -> Dict[str, Any]: ...

class OpenedSequence:
    @property
    def id(self) -> int: ...
    @property
    def cached_tokens(self) -> int: ...

class StepPlan:
    @property
    def id(self) -> int: ...
    @property
    def sequences(self) -> List[int]: ...
    @property
    def capturable(self) -> bool: ...
    @property
    def graph_key(self) -> int: ...

class StepStats:
    @property
    def sequence_status(self) -> List[Optional[StatusError]]: ...
    @property
    def ok(self) -> bool: ...
    retrievals: int
    attended_head_pages: int
    fetched_head_pages: int
    unleased_head_pages: int
    pool_hits: int
    shared_head_pages: int
    verify_failures: int
    stale_hints: int
    fallback_reads: int
    bytes_fetched: int
    @property
    def bytes_from_tier(self) -> Dict[str, int]: ...
    bytes_committed: int
    append_s: float
    select_s: float
    fetch_s: float
    verify_s: float
    resolve_s: float
    lease_s: float
    gather_s: float
    attend_s: float
    commit_s: float

class DecodeWorker:
    """Pagoda's decode path as an attention backend over torch tensors (DLPack, no copies).

    Call order: open -> prefill (per layer) -> plan -> attend (per layer) -> finish.
    Tensors: the worker's dtype on its device, last axis contiguous. Bad input raises
    InvalidArgumentError (a ValueError) and changes nothing; other failures raise StatusError.
    """

    def __init__(
        self,
        store: Store,
        *,
        num_layers: int,
        q_heads: int,
        kv_heads: int,
        head_dim: int,
        dtype: str = "fp16",
        page_tokens: int = 16,
        policy: str = "quest",
        budget_tokens: int = 512,
        sink_pages: int = 1,
        window_pages: int = 1,
        pool_slots_per_head: int = 4096,
        summary_slots: int = 65536,
        prepare_host_bytes: int = 0,
        select_threads: int = 0,
        prefill_to_pool: bool = False,
        capturable_steps: bool = False,
        selector: Dict[str, Any] = ...,
        tenant: str = "decode",
        model_id: str = "model",
        salt: str = "",
        first_layer: int = 0,
        pin_prompt: bool = False,
        prefetch: bool = True,
        verify: bool = True,
        boundary_trigger: bool = False,
        boundary_threshold: float = 0.9,
        layer_thresholds: Sequence[float] = ...,
        layer_streaming_heads: Sequence[Sequence[int]] = ...,
        device: str = "cpu",
        stream: Any = None,
    ) -> None: ...
    def open(self, token_ids: Sequence[int]) -> OpenedSequence: ...
    def prefill(self, seq: int, layer: int, k: Any, v: Any) -> None:
        """k, v: [T, kv_heads, head_dim] of the next T prompt tokens of `layer`."""
    def fork(self, parent: int) -> int: ...
    def close(self, seq: int) -> None: ...
    def plan(self, seqs: Sequence[int], token_ids: Sequence[int]) -> StepPlan: ...
    def attend(self, plan: StepPlan, layer: int, q: Any, k: Any, v: Any, out: Any) -> None:
        """q, out: [B, q_heads, head_dim]; k, v: [B, kv_heads, head_dim]; out written in place."""
    def replayed(self, plan: StepPlan) -> None:
        """A capturable step whose layers ran by a CUDA graph replay (same graph_key)."""
    def finish(self, plan: StepPlan) -> StepStats: ...
    def extend(self, seq: int, token_ids: Sequence[int]) -> None: ...
    def truncate(self, seq: int, tokens: int) -> None: ...
    def attend_block(
        self, seq: int, layer: int, q: Any, k: Any, v: Any, out: Any, keep_pages: Sequence[int] = ...
    ) -> StepStats:
        """q, out: [N, q_heads, head_dim]; k, v: [N, kv_heads, head_dim]; bidirectional."""
    def commit_block(self, seq: int, layer: int) -> None: ...
    def flush(self) -> None: ...
    def length(self, seq: int, layer: int = 0) -> int: ...
    def page_keys(self, seq: int, layer: int) -> List[int]: ...
    def last_rows(self, seq: int, layer: int) -> List[List[int]]: ...
    def attended_positions(self, seq: int, layer: int) -> List[List[int]]: ...
    def stats(self) -> Dict[str, int]: ...
    @property
    def device(self) -> str: ...
    @property
    def stream(self) -> int: ...
    @property
    def dtype(self) -> str: ...
    @property
    def page_tokens(self) -> int: ...
    @property
    def num_layers(self) -> int: ...
