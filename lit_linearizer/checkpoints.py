"""Loading a trained module back from a checkpoint: one-line errors for bad files, old paths of moved classes."""

from __future__ import annotations

import importlib
import zipfile
from pathlib import Path
from typing import Any

import torch

from lit_linearizer.errors import CheckpointError

__all__ = [
    "MOVED",
    "check_finite_weights",
    "load_module",
    "module_class",
    "module_from_checkpoint",
    "nonfinite_weights",
    "read_checkpoint",
    "run_config",
]

# Import paths that checkpoints written before the applications moved into packages (issue 16) store, in
# their metadata (``module_class``) and hyper-parameters (``_target_``), and where those objects are now.
_ONE_STEP = "lit_linearizer.applications.one_step.module.OneStepLitModule"
_IDEMPOTENT = "lit_linearizer.applications.idempotent.module.IdempotentLitModule"
_STYLE_TRANSFER = "lit_linearizer.applications.style_transfer.module.StyleTransferLitModule"
MOVED = {
    "lit_linearizer.modules.OneStepLitModule": _ONE_STEP,
    "lit_linearizer.modules.one_step.OneStepLitModule": _ONE_STEP,
    "lit_linearizer.modules.IdempotentLitModule": _IDEMPOTENT,
    "lit_linearizer.modules.idempotent.IdempotentLitModule": _IDEMPOTENT,
    "lit_linearizer.modules.StyleTransferLitModule": _STYLE_TRANSFER,
    "lit_linearizer.modules.style_transfer.StyleTransferLitModule": _STYLE_TRANSFER,
    "lit_linearizer.modules.style_transfer.style_operator": "lit_linearizer.operators.style.style_operator",
    "lit_linearizer.modules.style_transfer.operator_at_shape": "lit_linearizer.operators.style.operator_at_shape",
    "lit_linearizer.modules.style_transfer.SqueezedOperator": "lit_linearizer.operators.squeezed.SqueezedOperator",
    "lit_linearizer.modules.style_transfer.LatentConvOperator": (
        "lit_linearizer.operators.convolution.LatentConvOperator"
    ),
    "lit_linearizer.operators.depthwise.DepthwiseConvOperator": (
        "lit_linearizer.operators.convolution.DepthwiseConvOperator"
    ),
}
MIGRATION = "lit_linearizer.checkpoints.MOVED maps the paths of classes that moved"


def read_checkpoint(path: str | Path, mmap: bool = False) -> dict[str, Any]:
    """The checkpoint dict, or a CheckpointError saying why it cannot be used.

    ``mmap=True`` maps the tensors instead of reading them (a quick look at a large file's metadata).
    """
    path = Path(path).expanduser()
    if path.is_dir():
        found = sorted(path.glob("*.ckpt")) or sorted(path.glob("checkpoints/*.ckpt"))
        hint = f"; e.g. ckpt_path={next((p for p in found if p.name == 'last.ckpt'), found[-1])}" if found else ""
        raise CheckpointError(f"checkpoint {path} is a directory, not a checkpoint file{hint}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except RuntimeError as error:
            if not mmap or "mmap" not in str(error):
                raise
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)  # an old (non-zip) format
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as error:
        reason = " ".join(str(error).split())[:120]
        raise CheckpointError(f"checkpoint {path} is unreadable (corrupt or truncated?): {reason}") from None
    except Exception as error:  # e.g. an UnpicklingError from a file that is not a checkpoint
        raise CheckpointError(f"checkpoint {path} is not a lit-linearizer checkpoint: {type(error).__name__}") from None
    if not isinstance(checkpoint, dict) or "lit_linearizer" not in checkpoint or "state_dict" not in checkpoint:
        raise CheckpointError(f"checkpoint {path} was not written by lit-linearizer (no model metadata)")
    return checkpoint


def check_finite_weights(checkpoint: dict[str, Any], path: str | Path) -> None:
    """A CheckpointError if the checkpoint's weights hold NaN/inf (a run that diverged): never sampled from."""
    broken = nonfinite_weights(checkpoint["state_dict"])
    if broken:
        raise CheckpointError(
            f"checkpoint {path} holds NaN/inf weights ({len(broken)} tensors, e.g. {broken[0]}): the run had diverged "
            f"when it was saved (step {checkpoint.get('global_step', '?')}); use an earlier checkpoint"
        )


def nonfinite_weights(state_dict: dict[str, Any]) -> list[str]:
    """Names of the floating-point tensors of ``state_dict`` that hold NaN or inf."""
    return [
        name
        for name, value in state_dict.items()
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all())
    ]


def module_class(checkpoint: dict[str, Any]) -> type:
    """The LightningModule class a checkpoint was saved from (an old import path resolves through ``MOVED``)."""
    qualified = checkpoint["lit_linearizer"]["module_class"]
    current = MOVED.get(qualified, qualified)
    module_name, _, class_name = current.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError):
        raise CheckpointError(
            f"checkpoint needs {qualified}, which this version of lit-linearizer lacks "
            f"({MIGRATION}; add its new path there)"
        ) from None


def _current_targets(value: Any) -> Any:
    """Hyper-parameters with every ``_target_`` that moved replaced by its current path."""
    if isinstance(value, dict):
        return {
            k: MOVED.get(v, v) if k == "_target_" and isinstance(v, str) else _current_targets(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_current_targets(v) for v in value]
    return value


def load_module(path: str | Path, map_location: str | torch.device = "cpu"):
    """Rebuild the LightningModule a checkpoint was saved from (EMA weights), in eval mode."""
    return module_from_checkpoint(read_checkpoint(path), path, map_location)


def module_from_checkpoint(checkpoint: dict[str, Any], path: str | Path, map_location: str | torch.device = "cpu"):
    """``load_module`` for a checkpoint already read with ``read_checkpoint`` (``path`` is for messages)."""
    cls = module_class(checkpoint)
    try:
        module = cls(**_current_targets(checkpoint["hyper_parameters"]))
    except Exception as error:
        raise CheckpointError(f"checkpoint {path} holds a config this version cannot build: {error}") from None
    # Checkpoints of torch.compile'd modules name parameters "_orig_mod.<name>".
    state_dict = {k.replace("_orig_mod.", ""): v for k, v in checkpoint["state_dict"].items()}
    check_finite_weights(checkpoint, path)
    missing, unexpected = module.load_state_dict(state_dict, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {path} does not match its model config: {len(missing)} missing keys "
            f"(e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]})"
        )
    module.noise.restore(checkpoint["lit_linearizer"].get("noise_generator"))
    module.on_load_checkpoint(checkpoint)  # what an application keeps beside the state_dict
    return module.to(map_location).eval()


def run_config(checkpoint: dict[str, Any]) -> dict[str, Any] | None:
    """The resolved training config stored in the checkpoint (None for older files)."""
    return checkpoint["lit_linearizer"].get("run_config")
