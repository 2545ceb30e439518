"""Evaluation outside the platform: single-image export, torch-fidelity on it, a reproducible digit classifier."""

from __future__ import annotations

import json
import logging
import time

import numpy as np
import pytest
import torch
import torch_fidelity
from PIL import Image
from torch_fidelity.datasets import ImagesPathDataset

from datamodules import MNISTDataModule
from lit_linearizer.applications.one_step import cli as one_step_cli
from lit_linearizer.applications.one_step.grids import samples_grid
from lit_linearizer.applications.one_step.module import _EVAL_NOISE
from lit_linearizer.checkpoints import load_module
from lit_linearizer.errors import ConfigError
from lit_linearizer.images import to_uint8
from lit_linearizer.metrics import digit_classifier
from lit_linearizer.metrics.digit_classifier import DigitClassifier, register_torch_fidelity, weights_sha256
from lit_linearizer.tasks.evaluate import evaluate
from lit_linearizer.tasks.reporting import write_grids
from lit_linearizer.tasks.sample import sample
from lit_linearizer.tasks.train import train
from tests.conftest import FAST_OVERRIDES, TINY_ONE_STEP, compose_config


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, session_dirs):
    """A tiny one-step model after 3 training steps (no evaluation), and the directory it was trained in."""
    tmp = tmp_path_factory.mktemp("external")
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("LINEARIZER_CACHE_DIR", str(session_dirs["cache"]))
        monkeypatch.setenv("LINEARIZER_DATA_DIR", str(session_dirs["data"]))
        train(compose_config(tmp, ["experiment=mnist_one_step", *FAST_OVERRIDES, *TINY_ONE_STEP,
                                   "evaluate_after_fit=false"]))  # fmt: skip
    return tmp / "run" / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def mnist(session_dirs):
    data = MNISTDataModule(str(session_dirs["data"]), batch_size=64)
    data.prepare_data()
    data.setup("fit")
    return data


def _fidelity_fid(generated, real, weights_file) -> float:
    metrics = torch_fidelity.calculate_metrics(
        input1=str(generated), input2=str(real), fid=True, cuda=False, cache=False, verbose=False, save_cpu_ram=True,
        feature_extractor=register_torch_fidelity(), feature_extractor_weights_path=str(weights_file),
    )
    return metrics["frechet_inception_distance"]


def test_sample_png_writes_single_images_in_batches(checkpoint, tmp_path):
    cfg = compose_config(tmp_path, [f"ckpt_path={checkpoint}", "format=png", "n=10", "batch_size=4", "device=cpu"],
                         "sample")  # fmt: skip
    (folder,) = sample(cfg).values()
    assert folder == tmp_path / "run" / "samples_one_step"
    assert sorted(p.name for p in folder.iterdir()) == [f"{i:06d}.png" for i in range(10)]
    assert ImagesPathDataset(sorted(folder.iterdir()))[0].shape == (3, 32, 32)  # torch-fidelity reads them
    # Sample i comes from the same noise as cell i of the grid (format=grid).
    model = load_module(checkpoint).model
    _, batches = one_step_cli.sample_batches(model, n=10, batch_size=4)
    grid_images = model.sample(model.noise(10, 0))
    assert torch.allclose(torch.cat(list(batches)), ((grid_images + 1) / 2).clamp(0, 1), atol=1e-5)
    # n=100000 streams: nothing is generated before a batch is asked for, and a batch is batch_size images.
    started = time.time()
    _, batches = one_step_cli.sample_batches(model, n=100_000, batch_size=7)
    assert next(batches).shape == (7, 1, 32, 32) and time.time() - started < 10


def test_sample_grid_is_drawn_in_batches_with_a_progress_bar(checkpoint, tmp_path, capsys):
    """`linearizer sample n=100000` (format=grid): batch_size samples at a time into uint8 pixels, not one batch
    of n through the model (11.7 GB); the grid is the one-batch grid (to a rounding level) and is written as is."""
    model = load_module(checkpoint).model
    calls = []
    original = model.sample
    model.sample = lambda noise, **kwargs: calls.append(len(noise)) or original(noise, **kwargs)
    (grid,) = one_step_cli.sample(model, n=10, batch_size=4).values()
    assert calls == [4, 4, 2]
    assert "samples_one_step" in capsys.readouterr().err  # the progress bar over the samples
    expected = to_uint8(samples_grid(original(model.noise(10, 0))))  # grey images: make_grid's 3 equal channels
    assert grid.dtype == torch.uint8 and grid.shape == (1, *expected.shape[1:])
    assert (grid.int() - expected[:1].int()).abs().max() <= 1
    (path,) = write_grids({"grid": grid}, tmp_path).values()
    assert np.array_equal(np.asarray(Image.open(path)), grid[0].numpy())


def test_torch_fidelity_reproduces_fid_mnist_classifier(checkpoint, tmp_path, session_dirs, monkeypatch):
    """`linearizer eval export_images=true` writes the images behind fid_mnist_classifier; torch-fidelity with
    the digit classifier as its feature extractor gets the platform's number from them, and from
    `linearizer sample format=png` with the evaluation's noise."""
    monkeypatch.setenv("LINEARIZER_CACHE_DIR", str(session_dirs["cache"]))
    overrides = [f"ckpt_path={checkpoint}", "+metrics.domain_classifier=mnist", "export_images=true",
                 "+trainer.limit_val_batches=16"]  # fmt: skip
    evaluate(compose_config(tmp_path / "eval", overrides, "eval"))
    run = tmp_path / "eval" / "run"
    payload = json.loads((run / "metrics.json").read_text())
    platform = payload["metrics"]["fid_mnist_classifier"]
    info = payload["metric_info"]
    real, generated = run / "fid_images" / "real", run / "fid_images" / "generated"
    n = len(list(generated.iterdir()))
    assert n == len(list(real.iterdir())) == 256  # 16 batches of 16
    # The number says which classifier it comes from: the hash of the weights in the file it names.
    classifier = DigitClassifier()
    classifier.load_state_dict(torch.load(info["fid_mnist_classifier_weights_file"], weights_only=True))
    assert info["fid_mnist_classifier_weights_sha256"] == weights_sha256(classifier)

    exported = _fidelity_fid(generated, real, info["fid_mnist_classifier_weights_file"])
    assert exported == pytest.approx(platform, rel=1e-3)

    seed = load_module(checkpoint).noise.stream_seed(_EVAL_NOISE)  # the noise evaluation draws sample i from
    overrides = [f"ckpt_path={checkpoint}", "format=png", f"n={n}", f"seed={seed}", "batch_size=100", "device=cpu"]
    (folder,) = sample(compose_config(tmp_path / "sample", overrides, "sample")).values()
    sampled = _fidelity_fid(folder, real, info["fid_mnist_classifier_weights_file"])
    assert sampled == pytest.approx(platform, rel=1e-3)


def test_digit_classifier_weights_do_not_depend_on_the_thread_count(mnist):
    images, labels = mnist.train_dataset.images[::4], mnist.train_dataset.labels[::4]  # 1,000 images, 1 epoch
    previous = torch.get_num_threads()
    states = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            states.append(digit_classifier.train_classifier(images, labels, epochs=1).state_dict())
            assert torch.get_num_threads() == threads and not torch.are_deterministic_algorithms_enabled()
    finally:
        torch.set_num_threads(previous)
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


@pytest.mark.slow
def test_digit_classifier_full_recipe_is_identical_across_thread_counts(mnist):
    train = mnist.train_dataset
    previous = torch.get_num_threads()
    try:
        hashes = []
        for threads in (1, 4):
            torch.set_num_threads(threads)
            hashes.append(weights_sha256(digit_classifier.train_classifier(train.images, train.labels)))
    finally:
        torch.set_num_threads(previous)
    assert hashes[0] == hashes[1]


def test_first_training_of_a_digit_classifier_says_so_with_progress(mnist, tmp_path, caplog, capsys, monkeypatch):
    monkeypatch.setattr(digit_classifier, "train_classifier", _one_epoch(digit_classifier.train_classifier))
    train, val = mnist.train_dataset, mnist.val_dataset
    args = (train.images[::20], train.labels[::20], val.images[:50], val.labels[:50], tmp_path)
    with caplog.at_level(logging.WARNING, logger=digit_classifier.__name__):
        first, _ = digit_classifier.load_or_train_classifier(*args)
    assert "training its digit classifier on 200 images of 32x32" in caplog.text and "trained in" in caplog.text
    assert "digit classifier" in capsys.readouterr().err  # the progress bar
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=digit_classifier.__name__):
        again, _ = digit_classifier.load_or_train_classifier(*args)  # cached: silent
    assert caplog.text == "" and weights_sha256(first) == weights_sha256(again)


def _one_epoch(function):
    return lambda images, labels, epochs, seed, progress=False: function(images, labels, 1, seed, progress)


def test_export_options_fail_in_one_line(checkpoint, tmp_path):
    with pytest.raises(ConfigError, match="format='jpeg' is not one of"):
        sample(compose_config(tmp_path / "a", [f"ckpt_path={checkpoint}", "format=jpeg"], "sample"))
    with pytest.raises(ConfigError, match="source='data'"):
        sample(compose_config(tmp_path / "b", [f"ckpt_path={checkpoint}", "format=png", "source=data"], "sample"))
    with pytest.raises(ConfigError, match="stores no W&B run id.*wandb=new"):  # trained with logger=none
        evaluate(compose_config(tmp_path / "c", [f"ckpt_path={checkpoint}", "wandb=same"], "eval"))
    with pytest.raises(ConfigError, match="wandb='old' is not one of"):
        evaluate(compose_config(tmp_path / "d", [f"ckpt_path={checkpoint}", "wandb=old"], "eval"))
