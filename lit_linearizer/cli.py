"""The `linearizer` command: train | sample | eval | style | fetch-weights.

    linearizer train experiment=mnist_one_step trainer.max_epochs=5
    linearizer sample ckpt_path=outputs/.../last.ckpt n=64 steps=1
    linearizer eval ckpt_path=outputs/.../last.ckpt
    linearizer style ckpt_path=outputs/.../last.ckpt input=photo.jpg styles=[sepia,sketch] steps=9
    linearizer fetch-weights

Everything after the subcommand is a Hydra override (``--cfg job``, ``-m`` work as usual).
"""

from __future__ import annotations

import os
import sys
from typing import Callable

__all__ = ["COMMANDS", "USAGE", "main"]

USAGE = __doc__


# The config each command composes.
CONFIG_NAMES = {"train": "config", "sample": "sample", "eval": "eval", "style": "style"}


def _fail(message: str) -> None:
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
    sys.exit(2)


def _declared_trainer_keys() -> set[str]:
    from omegaconf import OmegaConf

    from lit_linearizer.config import CONFIG_DIR

    try:
        return set(OmegaConf.load(CONFIG_DIR / "trainer" / "default.yaml"))
    except Exception:
        return set()


def _normalise(overrides: list[str]) -> list[str]:
    """``+trainer.<key>=...`` for a key conf/trainer/default.yaml declares means ``trainer.<key>=...``
    (command lines written before the common Trainer keys were declared keep working)."""
    declared = None
    normalised = []
    for override in overrides:
        if override.startswith("+trainer.") and not override.startswith("++") and "=" in override:
            declared = _declared_trainer_keys() if declared is None else declared
            if override[len("+trainer.") :].split("=", 1)[0] in declared:
                override = "+" + override
        normalised.append(override)
    return normalised


def _config_keys(cfg, prefix: str = "") -> list[str]:
    from omegaconf import DictConfig

    keys = []
    for key in cfg.keys() if isinstance(cfg, DictConfig) else ():
        if key == "hydra":
            continue
        dotted = f"{prefix}{key}"
        value = cfg._get_node(key)
        keys.append(dotted)
        if isinstance(value, DictConfig):
            keys.extend(_config_keys(value, dotted + "."))
    return keys


def _hydra_error_line(command: str, error: Exception, overrides: list[str]) -> str:
    """Hydra's multi-line composition errors as one line that says what to do."""
    import difflib
    import re

    text = str(error)
    flat = " ".join(text.split())
    show = f"`linearizer {command} --cfg job` shows every key"
    missing_option = re.search(r"Could not find '([^']+)'", text)
    if missing_option:
        group, _, option = missing_option.group(1).rpartition("/")
        options = re.findall(r"^\s+(\S+)$", text.split("Available options", 1)[-1], flags=re.M)
        choices = f"choose one of {', '.join(options)}" if options else f"no {group} options exist"
        return f"{group}={option} is not an option: {choices}"
    not_a_key = re.search(r"Could not override '([^']+)'", text)
    if not_a_key:
        key = not_a_key.group(1)
        value = next((o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0] == key and "=" in o), "...")
        hint = ""
        try:  # the closest existing keys, from the config without this override
            cfg = _compose(command, [o for o in overrides if o.split("=", 1)[0] != key])
            close = difflib.get_close_matches(key, _config_keys(cfg), n=1, cutoff=0.8)
            hint = f" (did you mean {close[0]}?)" if close else ""
        except Exception:
            pass
        return f"{key} is not a config key{hint}; {show}, and +{key}={value} adds a new key"
    return f"{flat}; {show}"


def _compose(command: str, overrides: list[str]):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from lit_linearizer.config import CONFIG_DIR

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
            return compose(CONFIG_NAMES[command], overrides=overrides, return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()


def _precheck(command: str, overrides: list[str]) -> None:
    """Compose the config as Hydra will and check it (``tasks/preflight.py``) before anything heavy is imported
    or written: every problem is one line on stderr and exit status 2."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.errors import HydraException
    from omegaconf import open_dict, read_write
    from omegaconf.errors import OmegaConfBaseException

    from lit_linearizer.errors import UserInputError
    from lit_linearizer.tasks import preflight

    if any(o.startswith("-") for o in overrides):
        return  # --cfg, --help, -m ...: Hydra handles them (multirun jobs are checked as they start)
    # Launcher and sweeper settings compose only with their plugins' groups, which a single run does not use.
    checked = [o for o in overrides if not o.lstrip("+~").startswith(("hydra/", "hydra.launcher.", "hydra.sweeper."))]
    try:
        cfg = _compose(command, checked)
    except (HydraException, OmegaConfBaseException) as error:
        _fail(_hydra_error_line(command, error, checked))
    try:
        HydraConfig.instance().set_config(cfg)  # ${hydra:...} resolves (paths.root_dir, the run dir)
        run_dir = str(cfg.hydra.run.dir)
        with read_write(cfg.hydra), open_dict(cfg):
            cfg.hydra.runtime.output_dir = run_dir
        HydraConfig.instance().set_config(cfg)
        preflight.check(command, cfg)
    except UserInputError as error:
        _fail(str(error))
    except OmegaConfBaseException as error:  # an interpolation that does not resolve, a missing value
        message = " ".join(str(error).split())
        _fail(f"{message}; `linearizer {command} --cfg job` shows the config")


def _task(command: str) -> Callable:
    """The task function (this is where Lightning and the models are imported)."""
    if command == "train":
        from lit_linearizer.tasks.train import train

        return train
    if command == "sample":
        from lit_linearizer.tasks.sample import sample

        return sample
    if command == "eval":
        from lit_linearizer.tasks.evaluate import evaluate

        return evaluate
    from lit_linearizer.tasks.style import style

    return style


def _run_hydra(command: str, overrides: list[str]) -> None:
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from lit_linearizer.config import CONFIG_DIR
    from lit_linearizer.errors import UserInputError
    from lit_linearizer.tasks import preflight

    overrides = _normalise(overrides)
    _precheck(command, overrides)
    task = _task(command)
    original_argv = list(sys.argv)

    def wrapped(cfg):
        # Lightning's DDP launcher starts the other ranks with sys.argv: give it back the subcommand.
        sys.argv = original_argv
        try:
            if HydraConfig.get().mode == RunMode.MULTIRUN:
                preflight.check(command, cfg)  # a sweep's jobs were not composed before they started
            return task(cfg)
        except Exception as error:
            # Hydra wraps errors raised while it builds objects (InstantiationException): find ours.
            cause: BaseException | None = error
            while cause is not None and not isinstance(cause, UserInputError):
                cause = cause.__cause__
            if cause is None:
                raise
            _fail(str(cause))

    sys.argv = [original_argv[0], *overrides]
    try:
        hydra.main(config_path=str(CONFIG_DIR), config_name=CONFIG_NAMES[command], version_base="1.3")(wrapped)()
    finally:
        sys.argv = original_argv


def _train(overrides: list[str]) -> None:
    if not {"-m", "--multirun"} & set(overrides):  # a sweep's launcher stays killable; its jobs install their own
        from lit_linearizer.cluster import install_stop_handlers

        install_stop_handlers()  # before the slow imports: a preemption signal now is recorded, not fatal
    _run_hydra("train", overrides)


def _sample(overrides: list[str]) -> None:
    _run_hydra("sample", overrides)


def _eval(overrides: list[str]) -> None:
    _run_hydra("eval", overrides)


def _style(overrides: list[str]) -> None:
    _run_hydra("style", overrides)


def _fetch_weights(args: list[str]) -> None:
    import argparse

    from lit_linearizer.metrics.weights import LPIPS_BACKBONE_URLS, download_all

    description = "Download FID/LPIPS weights (needs internet)."
    parser = argparse.ArgumentParser(prog="linearizer fetch-weights", description=description)
    parser.add_argument("--lpips-nets", nargs="+", default=["alex"], choices=sorted(LPIPS_BACKBONE_URLS))
    options = parser.parse_args(args)
    if int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0"))) != 0:
        return  # one download per job, on rank zero
    try:
        for path in download_all(tuple(options.lpips_nets)):
            print(f"ok: {path}")
    except Exception as error:  # network errors: say so in one line
        print(f"error: download failed ({' '.join(str(error).split())[:160]}); this needs internet", file=sys.stderr)
        sys.exit(2)


COMMANDS: dict[str, Callable[[list[str]], None]] = {
    "train": _train,
    "sample": _sample,
    "eval": _eval,
    "style": _style,
    "fetch-weights": _fetch_weights,
}


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE)
        return
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}; choose one of {', '.join(COMMANDS)}", file=sys.stderr)
        sys.exit(2)
    COMMANDS[command](rest)


if __name__ == "__main__":
    main()
