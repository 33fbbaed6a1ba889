"""Whether a GPU task can really train on CUDA, and the fall-back when it cannot.

Ray places a ``num_gpus=1`` task on a node that *declares* a GPU; that says
nothing about a usable CUDA device in the worker (a node declared with
``--num-gpus`` on a machine without one, a broken driver, no PyTorch in the
image). Lance trains on CUDA through PyTorch, so the task checks
``torch.cuda.is_available()`` first and trains on the CPU, with a logged
warning, when the answer is no or PyTorch is not importable; if lance itself
then raises on the CUDA path, that falls back the same way. The CUDA path only
runs on a machine with a real GPU.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass

_LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class AcceleratorChoice:
    accelerator: str | None  # "cuda", or None for the CPU
    fallback_reason: str | None = None  # why a GPU was wanted but not used

    @property
    def device(self) -> str:
        return "gpu" if self.accelerator else "cpu"


def cuda_status() -> tuple[bool, str]:
    """(usable, why not) for CUDA in this process, as PyTorch sees it."""
    try:
        torch = importlib.import_module("torch")
    except ImportError:
        return False, "PyTorch is not importable, and lance trains on CUDA through it"
    try:
        if torch.cuda.is_available():
            return True, ""
    except Exception as exc:  # a broken driver raises instead of answering False
        return False, f"torch.cuda.is_available() failed: {exc}"
    return False, "torch.cuda.is_available() is False: no usable CUDA device on this worker"


def choose_accelerator(want_gpu: bool) -> AcceleratorChoice:
    if not want_gpu:
        return AcceleratorChoice(None)
    usable, reason = cuda_status()
    if usable:
        return AcceleratorChoice("cuda")
    _LOG.warning("GPU training requested but %s; training on the CPU instead", reason)
    return AcceleratorChoice(None, reason)
