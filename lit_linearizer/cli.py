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


def _precheck(config_name: str, overrides: list[str]) -> None:
    """Compose the config once to turn Hydra's errors into a short message with a hint."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from lit_linearizer.config import CONFIG_DIR

    if any(o.startswith("-") for o in overrides):
        return  # --cfg, --help, -m ...: let Hydra handle them
    checked = [o for o in overrides if not o.lstrip("+~").startswith("hydra")]
    try:
        with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
            compose(config_name, overrides=checked)
    except (HydraException, OmegaConfBaseException) as error:
        message = " ".join(str(error).split())
        print(f"error: {message}", file=sys.stderr)
        print(
            f"hint: show the full config with `linearizer {_COMMAND_OF[config_name]} --cfg job`; "
            f"config groups and their options are the folders and files in {CONFIG_DIR}; "
            "add a new key with +key=value",
            file=sys.stderr,
        )
        sys.exit(2)
    finally:
        GlobalHydra.instance().clear()


def _run_hydra(config_name: str, task: Callable, overrides: list[str]) -> None:
    import hydra

    from lit_linearizer.config import CONFIG_DIR
    from lit_linearizer.errors import UserInputError

    _precheck(config_name, overrides)
    original_argv = list(sys.argv)

    def wrapped(cfg):
        # Lightning's DDP launcher starts the other ranks with sys.argv: give it back the subcommand.
        sys.argv = original_argv
        try:
            return task(cfg)
        except Exception as error:
            # Hydra wraps errors raised while it builds objects (InstantiationException): find ours.
            cause: BaseException | None = error
            while cause is not None and not isinstance(cause, UserInputError):
                cause = cause.__cause__
            if cause is None:
                raise
            print(f"error: {cause}", file=sys.stderr)
            sys.exit(2)

    sys.argv = [original_argv[0], *overrides]
    try:
        hydra.main(config_path=str(CONFIG_DIR), config_name=config_name, version_base="1.3")(wrapped)()
    finally:
        sys.argv = original_argv


def _train(overrides: list[str]) -> None:
    if not {"-m", "--multirun"} & set(overrides):  # a sweep's launcher stays killable; its jobs install their own
        from lit_linearizer.cluster import install_stop_handlers

        install_stop_handlers()  # before the slow imports: a preemption signal now is recorded, not fatal
    from lit_linearizer.tasks.train import train

    _run_hydra("config", train, overrides)


def _sample(overrides: list[str]) -> None:
    from lit_linearizer.tasks.sample import sample

    _run_hydra("sample", sample, overrides)


def _eval(overrides: list[str]) -> None:
    from lit_linearizer.tasks.evaluate import evaluate

    _run_hydra("eval", evaluate, overrides)


def _style(overrides: list[str]) -> None:
    from lit_linearizer.tasks.style import style

    _run_hydra("style", style, overrides)


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
_COMMAND_OF = {"config": "train", "sample": "sample", "eval": "eval", "style": "style"}


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
