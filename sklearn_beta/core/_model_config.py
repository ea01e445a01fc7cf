"""The deployment that BLIS's trained-physics basis describes: model, GPU, tp.

:func:`read_model_description` reads a HuggingFace ``config.json`` into the
quantities of ``shared/blis/trained-physics.md`` (``L, d, H, H_kv, d_ff``,
bytes per weight, head dim ``d / H``, ``d_kv``) and joins them with a GPU of
BLIS's bundled table (:data:`GPU_SPECS`) and the tensor-parallel degree.

Bytes per weight (``bpp``) are read from the config, in this order:

1. ``quantization_config`` present: FP8 weights (``bpp = 1``) when its
   ``quant_method`` is ``"fp8"`` or ``"fbgemm_fp8"``, when it is
   ``"modelopt"`` with ``quant_algo`` ``"FP8"``, or when it is
   ``"compressed-tensors"`` and every group of ``config_groups`` quantises
   weights to 8-bit floats (``num_bits`` 8, ``type`` ``"float"``). Any other
   quantisation (AWQ, GPTQ, integer or 4-bit schemes) is refused: BLIS's
   basis knows 2-byte and 1-byte (FP8) weights only.
2. Otherwise ``torch_dtype`` (or ``dtype``, its name since transformers 4.56):
   ``"bfloat16"`` or ``"float16"`` give ``bpp = 2``; anything else, or
   neither key, is refused rather than guessed.

With FP8 weights the compute rate ``F`` is the GPU's FP8 figure (BLIS's
rule); a GPU without one (A100) is refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

__all__ = ["GPU_SPECS", "GpuSpec", "ModelDescription", "read_model_description"]


@dataclass(frozen=True)
class GpuSpec:
    """A GPU's datasheet figures, as BLIS's bundled table has them.

    Attributes
    ----------
    tflops : float
        Peak dense BF16 TFLOP/s.
    fp8_tflops : float or None
        Peak dense FP8 TFLOP/s; None when the GPU has no FP8 units.
    hbm_tbps : float
        HBM bandwidth, TB/s.
    """

    tflops: float
    fp8_tflops: float | None
    hbm_tbps: float


#: BLIS's bundled GPU table (``shared/blis/trained-physics.md``), by the name
#: BLIS's ``--hardware`` takes.
GPU_SPECS: dict[str, GpuSpec] = {
    "H100": GpuSpec(tflops=989.5, fp8_tflops=1979.0, hbm_tbps=3.35),
    "A100-SXM": GpuSpec(tflops=312.0, fp8_tflops=None, hbm_tbps=2.039),
    "A100-80": GpuSpec(tflops=312.0, fp8_tflops=None, hbm_tbps=2.039),
    "L40S": GpuSpec(tflops=362.05, fp8_tflops=1466.0, hbm_tbps=0.864),
}

_REQUIRED_KEYS = (
    "num_hidden_layers",
    "hidden_size",
    "num_attention_heads",
    "intermediate_size",
)
# A positive count under any of these keys means a mixture-of-experts model.
_MOE_KEYS = (
    "num_experts",
    "num_local_experts",
    "n_routed_experts",
    "moe_num_experts",
    "num_experts_per_tok",
)
_TWO_BYTE_DTYPES = ("bfloat16", "float16")
_FP8_METHODS = ("fp8", "fbgemm_fp8")


@dataclass(frozen=True)
class ModelDescription:
    """A dense model on one GPU type at one tensor-parallel degree.

    Attributes
    ----------
    name : str
        The model's name (``_name_or_path`` of the config, else its folder).
    n_layers, hidden_size, n_heads, n_kv_heads, intermediate_size : int
        ``L, d, H, H_kv, d_ff`` of the config.
    bytes_per_param : int
        ``bpp``: 2 for bfloat16/float16 weights, 1 for FP8 weights.
    gpu : str
        A key of :data:`GPU_SPECS`.
    tp : int
        Tensor-parallel degree; divides ``n_heads``.
    source : str
        The config file read.
    """

    name: str
    n_layers: int
    hidden_size: int
    n_heads: int
    n_kv_heads: int
    intermediate_size: int
    bytes_per_param: int
    gpu: str
    tp: int
    source: str = ""

    def __post_init__(self):
        # The checks live here so that a description built by hand is held
        # to the same rules as one read from a config.json.
        where = self.source or "the model description"
        _check_gpu(self.gpu)
        _positive_int(self.tp, "tp")
        if self.hidden_size % self.n_heads:
            raise ValueError(
                f"'hidden_size' {self.hidden_size} in {where} is not a multiple "
                f"of 'num_attention_heads' {self.n_heads}: BLIS's head dim is "
                "their quotient."
            )
        if self.n_heads % self.tp:
            raise ValueError(
                f"tp = {self.tp} does not divide the {self.n_heads} attention "
                f"heads of {where}."
            )
        if self.bytes_per_param not in (1, 2):
            raise ValueError(
                f"bytes_per_param must be 2 (bfloat16/float16) or 1 (FP8), got "
                f"{self.bytes_per_param!r}."
            )
        if self.bytes_per_param == 1 and GPU_SPECS[self.gpu].fp8_tflops is None:
            raise ValueError(
                f"{where} has FP8 weights but {self.gpu} has no FP8 figure in "
                "BLIS's table."
            )

    @property
    def head_dim(self) -> float:
        """``d_h = d / H`` (BLIS's rule; a ``head_dim`` key is not used)."""
        return self.hidden_size / self.n_heads

    @property
    def kv_dim(self) -> float:
        """``d_kv = H_kv * d_h``."""
        return self.n_kv_heads * self.head_dim

    @property
    def flops_per_us(self) -> float:
        """``F``: FLOP per microsecond (the FP8 figure for 1-byte weights)."""
        spec = GPU_SPECS[self.gpu]
        tflops = spec.fp8_tflops if self.bytes_per_param == 1 else spec.tflops
        return tflops * 1e6

    @property
    def bytes_per_us(self) -> float:
        """``W``: HBM bytes per microsecond."""
        return GPU_SPECS[self.gpu].hbm_tbps * 1e6


def _check_gpu(gpu) -> str:
    if not isinstance(gpu, str) or gpu not in GPU_SPECS:
        raise ValueError(
            f"Unknown GPU {gpu!r}: BLIS's trained-physics table knows "
            f"{', '.join(GPU_SPECS)}."
        )
    return gpu


def _positive_int(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be a positive integer, got {value!r}.")
    return value


def _config_int(config: dict, key: str, source: str) -> int:
    if key not in config:
        raise ValueError(
            f"{source} has no {key!r}, which the trained-physics basis needs "
            f"(it needs {', '.join(_REQUIRED_KEYS)}; a multimodal config keeps "
            "them under 'text_config', which is not read)."
        )
    return _positive_int(config[key], f"{key!r} in {source}")


def _is_fp8_scheme(quant: dict) -> bool:
    method = str(quant.get("quant_method", "")).lower()
    if method in _FP8_METHODS:
        return True
    if method == "modelopt":
        return str(quant.get("quant_algo", "")).upper() == "FP8"
    if method == "compressed-tensors":
        groups = quant.get("config_groups") or {}
        weights = [g.get("weights") or {} for g in groups.values()]
        return bool(weights) and all(
            w.get("num_bits") == 8 and str(w.get("type", "")).lower() == "float"
            for w in weights
        )
    return False


def _bytes_per_param(config: dict, source: str) -> int:
    quant = config.get("quantization_config")
    if quant is not None:
        if isinstance(quant, dict) and _is_fp8_scheme(quant):
            return 1
        method = quant.get("quant_method") if isinstance(quant, dict) else quant
        raise ValueError(
            f"{source} quantises its weights with {method!r}: the trained-physics "
            "basis knows bfloat16/float16 (2 bytes) and FP8 (1 byte) weights only."
        )
    key = "torch_dtype" if "torch_dtype" in config else "dtype"
    if key not in config:
        raise ValueError(
            f"{source} has no 'torch_dtype' (or 'dtype'): the bytes per weight "
            "of the trained-physics basis are read from it."
        )
    dtype = str(config[key]).removeprefix("torch.")
    if dtype not in _TWO_BYTE_DTYPES:
        raise ValueError(
            f"{key!r} in {source} is {config[key]!r}: the trained-physics basis "
            "knows bfloat16/float16 (2 bytes) and FP8-quantised (1 byte) weights "
            "only."
        )
    return 2


def _check_dense(config: dict, source: str) -> None:
    moe = [
        key
        for key in _MOE_KEYS
        if isinstance(config.get(key), int)
        and not isinstance(config.get(key), bool)
        and config[key] > 0
    ]
    if moe:
        raise ValueError(
            f"{source} describes a mixture-of-experts model ({moe[0]} = "
            f"{config[moe[0]]}): only dense models are supported."
        )


def read_model_description(
    path: str | PathLike, *, gpu: str, tp: int = 1
) -> ModelDescription:
    """Read a HuggingFace ``config.json`` into a :class:`ModelDescription`.

    Parameters
    ----------
    path : str or path-like
        The model's ``config.json``.
    gpu : str
        A GPU of BLIS's table: ``"H100"``, ``"A100-SXM"``, ``"A100-80"`` or
        ``"L40S"``.
    tp : int, default=1
        Tensor-parallel degree; must divide ``num_attention_heads``.

    Returns
    -------
    model : ModelDescription

    Raises
    ------
    ValueError
        On an unknown GPU (the message lists the known ones), a missing or
        non-positive key (named, with the file), a ``hidden_size`` that
        ``num_attention_heads`` does not divide, a ``tp`` that does not divide
        the heads, a mixture-of-experts config, weights that are neither
        2-byte floats nor FP8, or FP8 weights on a GPU without FP8 figures.

    Examples
    --------
    >>> from sklearn_beta.export import read_model_description
    >>> path = "sklearn_beta/datasets/data/qwen3-14b-config.json"
    >>> m = read_model_description(path, gpu="H100", tp=1)
    >>> m.n_layers, m.hidden_size, m.head_dim, m.kv_dim, m.bytes_per_param
    (40, 5120, 128.0, 1024.0, 2)
    """
    gpu = _check_gpu(gpu)
    tp = _positive_int(tp, "tp")
    path = Path(path)
    source = str(path)
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{source} is not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise ValueError(f"{source} does not hold a JSON object.")
    _check_dense(config, source)
    n_layers, hidden, heads, d_ff = (
        _config_int(config, key, source) for key in _REQUIRED_KEYS
    )
    kv_heads = config.get("num_key_value_heads")
    kv_heads = (
        heads
        if kv_heads is None
        else _positive_int(kv_heads, f"'num_key_value_heads' in {source}")
    )
    bpp = _bytes_per_param(config, source)
    name = config.get("_name_or_path") or path.resolve().parent.name
    return ModelDescription(
        name=str(name),
        n_layers=n_layers,
        hidden_size=hidden,
        n_heads=heads,
        n_kv_heads=kv_heads,
        intermediate_size=d_ff,
        bytes_per_param=bpp,
        gpu=gpu,
        tp=tp,
        source=source,
    )
