"""Numeric precision: whether this CPU computes bfloat16 natively, which precision a device
serves by default, and casting a loaded float32 model to another precision.

On CPUs with AMX or AVX-512 BF16 (Intel Sapphire Rapids and later, AMD Zen 4 and later) a
bfloat16 CLIP is about 3x faster than float32 at a feature cosine of ~0.9999 (the figures and
the agreement of fates and top-1 are measured by ``benchmarks/bf16_fidelity.py``). Without
those instructions bfloat16 is emulated and slower than float32, so the default is detected,
never assumed: ``bf16`` on a CPU with native bfloat16, ``fp32`` elsewhere. On CUDA the default is
``fp32`` (exact comparison with the paper; a ViT-B at batch 1 is not compute-bound there).
``fp32`` is always available for exact comparison with the paper.

Precisions use open_clip's names: ``bf16`` / ``fp16`` are its mixed modes (weights in half
precision, LayerNorms in float32), which :func:`cast` reproduces exactly from a float32 model.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from open_clip.model import convert_weights_to_lp
from open_clip.transformer import LayerNorm, LayerNormFp32

from .errors import ConfigError
from .models import PRECISIONS, ClipModel

AUTO = "auto"
# What --precision and the app accept: "auto" (the device's default) or a concrete precision.
PRECISION_CHOICES = (AUTO, *PRECISIONS)
DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
}
# /proc/cpuinfo flags of x86 instructions that compute bfloat16 natively.
NATIVE_BF16_FLAGS: dict[str, str] = {"amx_bf16": "AMX", "avx512_bf16": "AVX-512 BF16"}
CPUINFO = Path("/proc/cpuinfo")


@dataclass(frozen=True)
class CpuBf16:
    """Whether this CPU computes bfloat16 natively, and by which instructions.

    features: the instruction sets found, e.g. ("AMX", "AVX-512 BF16"); empty: emulated.
    source: where that was read ("torch", "/proc/cpuinfo" or "none").
    """

    features: tuple[str, ...]
    source: str

    @property
    def native(self) -> bool:
        return bool(self.features)

    def describe(self) -> str:
        if not self.native:
            return "no native bfloat16 on this CPU (float32 is faster)"
        return f"native bfloat16 ({', '.join(self.features)})"


def cpu_flags(cpuinfo: str | None = None) -> frozenset[str]:
    """The CPU feature flags of the first processor in ``cpuinfo`` (the text of /proc/cpuinfo;
    read from the file when None). Empty where there is no such file (macOS, Windows)."""
    if cpuinfo is None:
        try:
            cpuinfo = CPUINFO.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return frozenset()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):  # x86, aarch64
            return frozenset(value.split())
    return frozenset()


def _torch_features() -> tuple[str, ...] | None:
    """The native bfloat16 instruction sets torch's own CPU query reports, or None where this
    torch has no such query (private API, absent from some builds)."""
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    avx512_bf16 = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    if amx is None or avx512_bf16 is None:
        return None
    return tuple(name for name, ok in (("AMX", amx()), ("AVX-512 BF16", avx512_bf16())) if ok)


def bf16_support(cpuinfo: str | None = None) -> CpuBf16:
    """This CPU's native bfloat16 support. With ``cpuinfo`` given (tests), only that text is
    read; otherwise torch's own query wins, /proc/cpuinfo's flags are the fallback."""
    if cpuinfo is None:
        from_torch = _torch_features()
        if from_torch is not None:
            return CpuBf16(from_torch, "torch")
    flags = cpu_flags(cpuinfo)
    if not flags:
        return CpuBf16((), "none")
    found = tuple(label for flag, label in NATIVE_BF16_FLAGS.items() if flag in flags)
    return CpuBf16(found, "/proc/cpuinfo")


def default_precision(device: str | torch.device = "cpu", support: CpuBf16 | None = None) -> str:
    """``bf16`` on a CPU with native bfloat16, ``fp32`` on other CPUs and on CUDA.

    support: the CPU's bfloat16 support (default: detected, :func:`bf16_support`)."""
    if torch.device(device).type != "cpu":
        return "fp32"
    return "bf16" if (support or bf16_support()).native else "fp32"


def resolve(choice: str, device: str | torch.device = "cpu", support: CpuBf16 | None = None) -> str:
    """A concrete precision for ``choice``: ``auto`` becomes the device's default, any of
    :data:`PRECISIONS` stays; anything else is a ConfigError naming the choices."""
    if choice == AUTO:
        return default_precision(device, support)
    if choice not in PRECISIONS:
        raise ConfigError(
            f"unknown precision {choice!r}; choose one of {', '.join(PRECISION_CHOICES)}"
        )
    return choice


def precision_of(clip: ClipModel) -> str:
    """The precision a loaded model runs in (that of its image input dtype)."""
    return next(name for name, dtype in DTYPES.items() if dtype == clip.dtype)


def _to_mixed(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """open_clip's mixed precision, in place, on a model built in float32: what
    ``create_model(precision=...)`` does, so the result is the same model bit for bit."""
    from open_clip.timm_model import TimmModel

    # open_clip builds mixed-precision towers with LayerNormFp32 (normalise in float32) where
    # float32 ones have LayerNorm: same parameters, so the class is all that changes.
    for m in model.modules():
        if type(m) is LayerNorm:
            m.__class__ = LayerNormFp32
    if not any(isinstance(m, TimmModel) for m in model.modules()):
        convert_weights_to_lp(model, dtype=dtype)
        return
    model.to(dtype=dtype)  # as open_clip does with timm towers, LayerNormFp32 back to float32
    for m in model.modules():
        if isinstance(m, LayerNormFp32):
            m.float()


def cast(clip: ClipModel, precision: str) -> ClipModel:
    """``clip`` in ``precision`` (a concrete one, see :func:`resolve`): the same object when it
    already is, else a new ClipModel on a copy of the weights (the original is untouched, so an
    app can serve both). Only float32 models are cast: casting back from half precision would
    not recover the float32 weights. Raises ConfigError otherwise."""
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    have = precision_of(clip)
    if have == precision:
        return clip
    if have != "fp32":
        raise ConfigError(
            f"cannot cast a {have} model to {precision}: load it in fp32 and cast from there"
        )
    model = copy.deepcopy(clip.model)
    _to_mixed(model, DTYPES[precision])
    return replace(clip, model=model, warmed=False, text_cache=type(clip.text_cache)())


__all__ = [
    "AUTO",
    "CpuBf16",
    "DTYPES",
    "NATIVE_BF16_FLAGS",
    "PRECISION_CHOICES",
    "bf16_support",
    "cast",
    "cpu_flags",
    "default_precision",
    "precision_of",
    "resolve",
]
