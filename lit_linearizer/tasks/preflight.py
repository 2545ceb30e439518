"""What `linearizer` checks before it imports Lightning, writes a file or trains a step.

Every check raises a one-line UserInputError that names the key or the file and says what to do;
the CLI prints it and exits with status 2 (``cli.py``). The checks read the composed config only
(plus the checkpoint, the weights files and the devices it names), so a typo costs about a second,
not the import of the training stack. What needs the data or the built model is checked where
those exist (the DataModules, the LightningModule).
"""

from __future__ import annotations

import math
import netrc
import os
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Iterable
from urllib.parse import urlparse

from omegaconf import DictConfig, ListConfig, OmegaConf

from lit_linearizer.errors import CheckpointError, ConfigError, MetricWeightsError

__all__ = [
    "ARCHITECTURE_KEYS",
    "check",
    "check_checkpoint_path",
    "check_output_dir",
    "check_resume",
    "check_values",
    "choose_wandb_mode",
    "model_differences",
]

_MISSING = object()


# -- values -----------------------------------------------------------------------------------------
def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _shown(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def positive_int(value):
    return _is_int(value) and value >= 1


def non_negative_int(value):
    return _is_int(value) and value >= 0


def positive_number(value):
    return _is_number(value) and value > 0


def non_negative_number(value):
    return _is_number(value) and value >= 0


def optional(rule: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda value: value is None or rule(value)


def one_of(*choices) -> Callable[[Any], bool]:
    return lambda value: value in choices


def _batch_limit(value):  # Lightning's limit_*_batches: a fraction of the epoch or a number of batches
    return value is None or non_negative_int(value) or (isinstance(value, float) and 0.0 <= value <= 1.0)


def _val_check_interval(value):
    return value is None or positive_int(value) or (isinstance(value, float) and 0.0 < value <= 1.0)


def _devices(value):
    if value in ("auto", -1) or positive_int(value):
        return True
    if isinstance(value, str):
        return all(part.strip().isdigit() for part in value.split(",") if part.strip()) and bool(value.strip(", "))
    return isinstance(value, (list, ListConfig)) and len(value) > 0 and all(non_negative_int(v) for v in value)


PRECISIONS = (
    "64-true", "64", 64, "32-true", "32", 32, "16-mixed", "16", 16, "bf16-mixed", "bf16", "16-true", "bf16-true",
    "transformer-engine", "transformer-engine-float16",
)  # fmt: skip
ACCELERATORS = ("cpu", "gpu", "cuda", "mps", "tpu", "auto")
SAMPLER_METHODS = ("euler", "rk4")

# (key, rule, what a valid value is, an example). A key the config does not have is not checked.
TRAIN_RULES: list[tuple[str, Callable[[Any], bool], str, str]] = [
    ("seed", _is_int, "an integer", "seed=0"),
    ("data.batch_size", positive_int, "a positive integer (the global batch)", "data.batch_size=64"),
    ("data.num_workers", non_negative_int, "a non-negative integer", "data.num_workers=0"),
    ("data.image_size", positive_int, "a positive integer (pixels)", "data.image_size=32"),
    ("data.crops_per_image", positive_int, "a positive integer", "data.crops_per_image=16"),
    ("model.optimizer.lr", positive_number, "a positive number", "model.optimizer.lr=1e-3"),
    ("model.optimizer.weight_decay", non_negative_number, "a non-negative number", "model.optimizer.weight_decay=0"),
    ("model.scheduler.warmup_steps", non_negative_int, "a non-negative integer", "model.scheduler.warmup_steps=100"),
    ("model.scheduler.min_lr_ratio", lambda v: _is_number(v) and 0 <= v <= 1, "a number in [0, 1]",
     "model.scheduler.min_lr_ratio=0.05"),
    ("model.ema_decay", lambda v: v is None or (_is_number(v) and 0 <= v < 1),
     "a number in [0, 1) (0 or null: no EMA)", "model.ema_decay=0.999"),
    ("model.sampler.steps", positive_int, "a positive integer (solver steps)", "model.sampler.steps=100"),
    ("model.sampler.method", one_of(*SAMPLER_METHODS), f"one of {', '.join(SAMPLER_METHODS)}",
     "model.sampler.method=rk4"),
    ("model.network.num_steps", positive_int, "a positive integer", "model.network.num_steps=4"),
    ("model.network.hidden_channels", positive_int, "a positive integer", "model.network.hidden_channels=32"),
    ("model.operator.rank", positive_int, "a positive integer", "model.operator.rank=8"),
    ("model.num_grid_samples", positive_int, "a positive integer", "model.num_grid_samples=64"),
    ("model.num_grid_images", positive_int, "a positive integer", "model.num_grid_images=3"),
    ("model.sample_every_n_epochs", positive_int, "a positive integer", "model.sample_every_n_epochs=1"),
    ("model.max_consecutive_skips", positive_int, "a positive integer", "model.max_consecutive_skips=10"),
    ("model.latent_noise_std", non_negative_number, "a non-negative number", "model.latent_noise_std=0.3"),
    ("model.transport.rank", positive_int, "a positive integer", "model.transport.rank=512"),
    ("model.transport.max_samples", positive_int, "a positive integer", "model.transport.max_samples=20000"),
    ("model.transport.batch_size", positive_int, "a positive integer", "model.transport.batch_size=500"),
    ("model.projection_fit.stay", non_negative_number, "a non-negative number", "model.projection_fit.stay=10"),
    ("model.projection_fit.max_samples", positive_int, "a positive integer", "model.projection_fit.max_samples=20000"),
    ("callbacks.model_checkpoint.every_n_train_steps", optional(non_negative_int),
     "null or a non-negative integer", "callbacks.model_checkpoint.every_n_train_steps=1000"),
    ("callbacks.model_checkpoint.save_top_k", lambda v: _is_int(v) and v >= -1, "an integer >= -1",
     "callbacks.model_checkpoint.save_top_k=1"),
]  # fmt: skip
TRAINER_RULES: list[tuple[str, Callable[[Any], bool], str, str]] = [
    ("trainer.max_epochs", lambda v: v is None or (_is_int(v) and (v == -1 or v >= 1)),
     "-1 (no limit) or a positive integer (0 would train nothing)", "trainer.max_epochs=10"),
    ("trainer.min_epochs", optional(non_negative_int), "null or a non-negative integer", "trainer.min_epochs=1"),
    ("trainer.max_steps", lambda v: _is_int(v) and (v == -1 or v >= 1), "-1 (no limit) or a positive integer",
     "trainer.max_steps=1000"),
    ("trainer.min_steps", optional(non_negative_int), "null or a non-negative integer", "trainer.min_steps=100"),
    ("trainer.limit_train_batches", lambda v: _batch_limit(v) and v != 0,
     "null, a fraction in (0, 1] or a positive number of batches (0 would train nothing)",
     "trainer.limit_train_batches=0.25"),
    ("trainer.limit_val_batches", _batch_limit, "null, a fraction in [0, 1] or a number of batches",
     "trainer.limit_val_batches=10"),
    ("trainer.limit_test_batches", _batch_limit, "null, a fraction in [0, 1] or a number of batches",
     "trainer.limit_test_batches=10"),
    ("trainer.val_check_interval", _val_check_interval, "null, a fraction in (0, 1] or a positive number of batches",
     "trainer.val_check_interval=0.5"),
    ("trainer.check_val_every_n_epoch", optional(positive_int), "null or a positive integer",
     "trainer.check_val_every_n_epoch=1"),
    ("trainer.gradient_clip_val", optional(non_negative_number), "null or a non-negative number",
     "trainer.gradient_clip_val=1.0"),
    ("trainer.gradient_clip_algorithm", one_of(None, "norm", "value"), "null, norm or value",
     "trainer.gradient_clip_algorithm=norm"),
    ("trainer.accumulate_grad_batches", positive_int, "a positive integer", "trainer.accumulate_grad_batches=4"),
    ("trainer.log_every_n_steps", positive_int, "a positive integer", "trainer.log_every_n_steps=10"),
    ("trainer.num_sanity_val_steps", lambda v: v is None or (_is_int(v) and v >= -1), "an integer >= -1",
     "trainer.num_sanity_val_steps=1"),
    ("trainer.num_nodes", positive_int, "a positive integer", "trainer.num_nodes=1"),
    ("trainer.devices", _devices, "a positive integer, -1, auto or a list of device indices", "trainer.devices=1"),
    ("trainer.accelerator", one_of(*ACCELERATORS), f"one of {', '.join(ACCELERATORS)}", "trainer.accelerator=cpu"),
    ("trainer.precision", one_of(None, *PRECISIONS),
     "one of 32-true, 16-mixed, bf16-mixed, 16-true, bf16-true, 64-true", "trainer.precision=bf16-mixed"),
]  # fmt: skip
SAMPLE_RULES: list[tuple[str, Callable[[Any], bool], str, str]] = [
    ("n", positive_int, "a positive integer (images)", "n=64"),
    ("steps", positive_int, "a positive integer (1: one step through B; T > 1: T solver steps)", "steps=1"),
    ("method", one_of(None, *SAMPLER_METHODS), f"null or one of {', '.join(SAMPLER_METHODS)}", "method=rk4"),
    ("seed", _is_int, "an integer", "seed=0"),
    ("source", one_of("noise", "data", "file"), "one of noise, data, file", "source=noise"),
]
STYLE_RULES: list[tuple[str, Callable[[Any], bool], str, str]] = [
    ("steps", lambda v: _is_int(v) and v >= 2, "an integer >= 2 (frames of the interpolation strip)", "steps=9"),
    ("size", lambda v: v is None or (_is_int(v) and v >= 2), "null or an integer >= 2 (pixels)", "size=256"),
]


def _select(cfg: DictConfig, key: str) -> Any:
    try:
        return OmegaConf.select(cfg, key, default=_MISSING, throw_on_missing=True)
    except Exception:  # an interpolation that does not resolve: reported where it is used
        return _MISSING


def check_values(cfg: DictConfig, rules: Iterable[tuple[str, Callable[[Any], bool], str, str]]) -> None:
    """Every key of ``rules`` that the config has must satisfy its rule."""
    for key, rule, wanted, example in rules:
        value = _select(cfg, key)
        if value is _MISSING:
            continue
        if not rule(value):
            raise ConfigError(f"{key}={_shown(value)} is not valid: it must be {wanted}; e.g. {example}")
    loss_weights = _select(cfg, "model.loss_weights")
    if isinstance(loss_weights, DictConfig):
        for name, value in loss_weights.items():
            if not non_negative_number(value):
                raise ConfigError(
                    f"model.loss_weights.{name}={_shown(value)} is not valid: it must be a non-negative number; "
                    f"e.g. model.loss_weights.{name}=1.0"
                )


def _required(cfg: DictConfig, key: str, example: str) -> Any:
    if OmegaConf.is_missing(cfg, key) or cfg.get(key) in (None, ""):
        raise ConfigError(f"{key} is required: {example}")
    return cfg.get(key)


# -- the network against the image size ---------------------------------------------------------------
def _image_shape(cfg: DictConfig) -> tuple[int, ...] | None:
    shape = _select(cfg, "model.image_shape")
    if shape is _MISSING or not isinstance(shape, (list, ListConfig)) or not all(_is_int(s) for s in shape):
        return None
    return tuple(shape)


def check_network(cfg: DictConfig) -> None:
    """The image size fits the network's squeeze and U-Net levels; conditioner options fit the conditioner."""
    network = _select(cfg, "model.network")
    shape = _image_shape(cfg)
    if not isinstance(network, DictConfig) or shape is None or len(shape) != 3:
        return
    conditioner = network.get("conditioner", "conv")
    kwargs = network.get("conditioner_kwargs") or {}
    if kwargs and "_target_" in network and str(network._target_).endswith("GlowNetwork"):
        import inspect

        from lit_linearizer.flows.conditioners import CONDITIONERS

        if conditioner not in CONDITIONERS:
            raise ConfigError(
                f"model.network.conditioner={_shown(conditioner)} is not one of {', '.join(sorted(CONDITIONERS))}"
            )
        accepted = set(inspect.signature(CONDITIONERS[conditioner].__init__).parameters) - {"self"}
        for name in kwargs:
            if name not in accepted:
                raise ConfigError(
                    f"model.network.conditioner_kwargs.{name} is not an option of the {conditioner} conditioner "
                    f"(it takes {', '.join(sorted(accepted - {'in_channels', 'out_channels', 'conditional'}))}); "
                    f"remove it with ~model.network.conditioner_kwargs.{name}"
                )
    factor, reasons = 1, []
    if network.get("squeeze", True):
        factor, reasons = 2, ["model.network.squeeze=true (2x2 space-to-depth)"]
    if conditioner == "unet":
        levels = int(kwargs.get("levels", 2))
        factor *= 2**levels
        reasons.append(f"a {levels}-level U-Net conditioner")
    factory = _select(cfg, "model.operator.factory")
    if isinstance(factory, DictConfig) and factory.get("squeeze") and factor % 2:
        factor *= 2
        reasons.append("model.operator.factory.squeeze=true")
    height, width = shape[1], shape[2]
    if factor > 1 and (height % factor or width % factor):
        size = max(factor, math.ceil(max(height, width) / factor) * factor)
        raise ConfigError(
            f"data.image_size={height if height == width else (height, width)} does not fit the network: "
            f"{' and '.join(reasons)} need{'s' if len(reasons) == 1 else ''} sides divisible by {factor}; "
            f"use e.g. data.image_size={size}"
        )


# -- devices --------------------------------------------------------------------------------------
def check_accelerator(cfg: DictConfig) -> None:
    accelerator = _select(cfg, "trainer.accelerator")
    if accelerator not in ("gpu", "cuda"):
        return
    import torch

    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if not available:
        raise ConfigError(
            f"trainer.accelerator={accelerator} (trainer=gpu) but this machine has no CUDA GPU; use trainer=cpu"
        )
    devices = _select(cfg, "trainer.devices")
    if positive_int(devices) and devices > available:
        raise ConfigError(
            f"trainer.devices={devices} but this machine has {available} GPU(s); use trainer.devices={available}"
        )


def check_device_option(cfg: DictConfig) -> None:
    device = cfg.get("device", "auto")
    if not isinstance(device, str) or not (device in ("auto", "cpu") or device.startswith("cuda")):
        raise ConfigError(
            f"device={_shown(device)} is not valid: it must be auto, cpu or cuda[:<index>]; e.g. device=cpu"
        )
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(f"device={device} but this machine has no CUDA GPU; use device=cpu (or device=auto)")


# -- files --------------------------------------------------------------------------------------------
def check_output_dir(path: str | Path, key: str = "hydra.run.dir") -> None:
    """The run directory can be created and written (probed with a temp file in its nearest existing parent)."""
    path = Path(path).expanduser().absolute()
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"output directory {path}: {existing} is a file, not a directory; pick another {key}")
    try:
        with tempfile.TemporaryFile(dir=existing, prefix=".linearizer-write-test-"):
            pass
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise ConfigError(
            f"output directory {path} cannot be written ({existing}: {reason}); pass {key}=<a writable directory> "
            "or set LINEARIZER_LOG_DIR"
        ) from None


def check_checkpoint_path(path: Any, key: str = "ckpt_path") -> Path:
    """``path`` names an existing checkpoint file (a directory gets a list of the checkpoints inside it)."""
    if path in (None, ""):
        raise ConfigError(f"{key} is required: {key}=<path to a .ckpt file>")
    path = Path(str(path)).expanduser()
    if path.is_dir():
        found = sorted(path.glob("*.ckpt")) or sorted(path.glob("checkpoints/*.ckpt"))
        last = [p for p in found if p.name == "last.ckpt"]
        hint = f"e.g. {key}={(last or found)[-1]}" if found else "it holds no .ckpt files"
        raise CheckpointError(f"{key}={path} is a directory, not a checkpoint file; {hint}")
    if not path.is_file():
        raise CheckpointError(
            f"{key}={path} does not exist; pass the path of a .ckpt file (a run keeps them in <run dir>/checkpoints/)"
        )
    return path


def _looks_like_torch_file(path: Path) -> bool:
    with open(path, "rb") as handle:
        head = handle.read(4)
    return head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"  # torch.save's zip, or a legacy pickle


def check_weights_files(cfg: DictConfig, prefix: str) -> None:
    """``<prefix>inception_weights`` / ``lpips_backbone_weights``: existing PyTorch weights files, if set."""
    for name, what in (("inception_weights", "FID Inception"), ("lpips_backbone_weights", "LPIPS backbone")):
        key = f"{prefix}{name}"
        value = _select(cfg, key)
        if value in (_MISSING, None, ""):
            continue
        path = Path(str(value)).expanduser()
        if not path.is_file():
            raise MetricWeightsError(f"{key}={path} does not exist; point it at the {what} weights file or unset it")
        if not _looks_like_torch_file(path):
            raise MetricWeightsError(
                f"{key}={path} is not a PyTorch weights file (.pth written by torch.save); point it at the {what} "
                "weights (`linearizer fetch-weights` downloads them) or unset it"
            )


# -- resuming ----------------------------------------------------------------------------------------
# What decides a checkpoint's tensors: a model that differs here cannot load the checkpoint's weights.
ARCHITECTURE_KEYS = ("_target_", "image_shape", "network_mode", "network", "operator", "styles")


def _flatten(value: Any, prefix: str) -> dict[str, Any]:
    if isinstance(value, dict):
        flat = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}.{key}"))
        return flat or {prefix: {}}
    if isinstance(value, tuple):
        value = list(value)
    return {prefix: value}


def model_differences(saved: dict[str, Any], current: dict[str, Any], keys=ARCHITECTURE_KEYS) -> list[tuple]:
    """``[(key, saved value, current value)]`` for the model keys in ``keys`` that differ (dotted, ``model.``)."""
    from lit_linearizer.checkpoints import MOVED

    def pick(config):
        picked = {k: config[k] for k in keys if k in config}
        if isinstance(picked.get("_target_"), str):
            picked["_target_"] = MOVED.get(picked["_target_"], picked["_target_"])
        return _flatten(picked, "model")

    before, after = pick(saved), pick(current)
    differences = []
    for key in sorted(set(before) | set(after)):
        old, new = before.get(key, "<absent>"), after.get(key, "<absent>")
        if old != new:
            differences.append((key, old, new))
    return differences


def check_resume(cfg: DictConfig, ckpt_path: str | Path, key: str = "ckpt_path") -> None:
    """The checkpoint is readable and was trained with the model the config builds now."""
    path = check_checkpoint_path(ckpt_path, key)
    from lit_linearizer.checkpoints import read_checkpoint, run_config

    saved = (run_config(read_checkpoint(path, mmap=True)) or {}).get("model")
    if not saved or "model" not in cfg:
        return
    current = OmegaConf.to_container(cfg.model, resolve=True)
    differences = model_differences(saved, current)
    if differences:
        shown = "; ".join(f"{k} is {_shown(a)} there, {_shown(b)} here" for k, a, b in differences[:4])
        more = f" (and {len(differences) - 4} more)" if len(differences) > 4 else ""
        raise CheckpointError(
            f"{key}={path} was trained with a different model: {shown}{more}; resume with the checkpoint's "
            "settings (its run dir's config.yaml) or train from scratch without ckpt_path"
        )


# -- Weights & Biases -----------------------------------------------------------------------------------
def _wandb_key_configured() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname or "api.wandb.ai"
    try:
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def wandb_reachable(timeout: float = 3.0) -> tuple[bool, str]:
    """(True, where) if the W&B server answers an HTTP request within ``timeout`` s, else (False, why).

    An answer is any HTTP status (W&B's own client then takes over); no answer is a failed DNS lookup, a
    refused or timed-out connection, a TLS failure, or a server that accepts the connection but never
    replies (a firewall or a captive proxy: W&B's client would wait about 100 s there). The request goes
    through ``HTTP(S)_PROXY``/``NO_PROXY`` as W&B's own does.
    """
    import http.client
    import urllib.error
    import urllib.request

    base = os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai"
    url = urlparse(base)
    host = url.hostname or "api.wandb.ai"
    where = f"{host}:{url.port or (80 if url.scheme == 'http' else 443)}"
    outcome: list[str] = []

    def probe() -> None:  # in a thread: a DNS lookup is not bounded by the socket timeout
        try:
            urllib.request.urlopen(urllib.request.Request(base, method="HEAD"), timeout=timeout).close()
            outcome.append("")
        except urllib.error.HTTPError:  # a status such as 404: the server is there
            outcome.append("")
        except (OSError, ValueError, http.client.HTTPException) as error:
            reason = getattr(error, "reason", None) or error  # URLError wraps the socket's error
            outcome.append(" ".join(str(reason).split()) or type(reason).__name__)

    worker = threading.Thread(target=probe, daemon=True)
    worker.start()
    worker.join(timeout + 0.5)
    if not outcome:
        return False, f"{where} did not answer within {timeout:.0f} s"
    return (True, where) if outcome[0] == "" else (False, f"{where} is unreachable ({outcome[0][:80]})")


def choose_wandb_mode(cfg: DictConfig, notice: Callable[[str], None]) -> None:
    """W&B that would go online must be able to: no key with WANDB_MODE=online is an error; a key without
    network falls back to offline (``WANDB_MODE=offline`` for this process and its children) with one line,
    or is an error when WANDB_MODE=online asked for online explicitly."""
    logger = _select(cfg, "logger")
    if not isinstance(logger, DictConfig) or not logger.get("wandb"):
        return
    wandb_cfg = logger.wandb
    mode = (os.environ.get("WANDB_MODE") or "").lower()
    if mode in ("offline", "disabled", "dryrun") or wandb_cfg.get("offline") is True:
        return
    if mode == "online" and not _wandb_key_configured():
        raise ConfigError(
            "WANDB_MODE=online but no W&B API key is configured; run `wandb login` or set WANDB_API_KEY, "
            "or log offline (unset WANDB_MODE) or with logger=csv"
        )
    if not _wandb_key_configured():
        return  # offline by default (config.wandb_offline)
    reachable, reason = wandb_reachable()
    if reachable:
        return
    if mode == "online":
        raise ConfigError(
            f"WANDB_MODE=online but the W&B server {reason}; unset WANDB_MODE to log offline, or use logger=csv"
        )
    os.environ["WANDB_MODE"] = "offline"
    notice(f"W&B: {reason}; logging offline instead (sync later with `wandb sync <run dir>/wandb/offline-run-*`)")


# -- per command -----------------------------------------------------------------------------------------
def _resolved_run_dir(cfg: DictConfig) -> str | None:
    try:
        return str(cfg.hydra.run.dir)
    except Exception:
        return None


def check(command: str, cfg: DictConfig, notice: Callable[[str], None] | None = None) -> None:
    """All checks of ``command`` (train, sample, eval, style) on its composed config (with Hydra's node)."""
    notice = notice or (lambda line: print(line, file=sys.stderr))
    if command == "train":
        check_values(cfg, TRAIN_RULES)
        check_values(cfg, TRAINER_RULES)
        check_network(cfg)
        check_weights_files(cfg, "model.metrics.")
    elif command == "sample":
        _required(cfg, "ckpt_path", "linearizer sample ckpt_path=<path to a .ckpt file>")
        check_values(cfg, SAMPLE_RULES)
        if cfg.get("source") == "file":
            _required(cfg, "input", "source=file reads input=<image file>")
        check_device_option(cfg)
    elif command == "style":
        _required(cfg, "ckpt_path", "linearizer style ckpt_path=<path to a .ckpt file> input=<photo>")
        _required(cfg, "input", "linearizer style ckpt_path=<checkpoint> input=<photo.jpg>")
        check_values(cfg, STYLE_RULES)
        check_device_option(cfg)
    elif command == "eval":
        _required(cfg, "ckpt_path", "linearizer eval ckpt_path=<path to a .ckpt file>")
        check_values(cfg, TRAINER_RULES)
        check_weights_files(cfg, "metrics.")
    if command in ("sample", "style", "eval"):
        from lit_linearizer.checkpoints import check_finite_weights, read_checkpoint

        path = check_checkpoint_path(cfg.ckpt_path)
        check_finite_weights(read_checkpoint(path, mmap=True), path)
    if command == "style":
        photo = Path(str(cfg.input)).expanduser()
        if not photo.is_file():
            raise ConfigError(f"input image {photo} does not exist; pass input=<a photo (.jpg/.png)>")
    if command in ("train", "eval"):
        check_accelerator(cfg)
    run_dir = _resolved_run_dir(cfg)
    if run_dir:
        check_output_dir(run_dir)
    if command == "train":
        if cfg.get("ckpt_path"):
            check_resume(cfg, cfg.ckpt_path)
        choose_wandb_mode(cfg, notice)
