"""Metrics: the digit-classifier FID, pretrained-weight plumbing, offline skips, probes, W&B mode."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from torchmetrics.image.fid import FrechetInceptionDistance

from datamodules import MNISTDataModule
from lit_linearizer.config import wandb_offline
from lit_linearizer.errors import MetricWeightsError
from lit_linearizer.images import to_unit_range
from lit_linearizer.metrics import pretrained, weights
from lit_linearizer.metrics.digit_classifier import DigitFeatures, classifier_path, load_or_train_classifier
from lit_linearizer.metrics.probe import linear_probe_accuracy


@pytest.fixture(scope="module")
def mnist(tmp_path_factory):
    dm = MNISTDataModule(str(tmp_path_factory.mktemp("mnist")), batch_size=8)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_digit_classifier_is_accurate_cached_and_its_fid_separates(mnist, session_dirs):
    train, val = mnist.train_dataset, mnist.val_dataset
    cache = session_dirs["cache"]  # the session's classifier: trained once, shared with the tests that need it
    classifier, accuracy = load_or_train_classifier(train.images, train.labels, val.images, val.labels, cache)
    assert accuracy > 0.9
    assert classifier_path(cache, train.images, train.labels).is_file()
    again, accuracy_again = load_or_train_classifier(train.images, train.labels, val.images, val.labels, cache)
    assert accuracy_again == accuracy
    assert all(torch.equal(a, b) for a, b in zip(classifier.state_dict().values(), again.state_dict().values()))

    def fid(real, fake):
        metric = FrechetInceptionDistance(feature=DigitFeatures(classifier), normalize=True, input_img_size=(1, 32, 32))
        metric.update(to_unit_range(real), real=True)
        metric.update(to_unit_range(fake), real=False)
        return float(metric.compute())

    floor = fid(train.images[::4], val.images)  # 1,000 images of every class (the split is sorted by class)
    ones_only = train.images[train.labels == 1]  # a mode-collapsed "generator"
    noise = torch.rand_like(val.images) * 2 - 1
    assert floor < 5
    assert fid(ones_only, val.images) > 10 * floor
    assert fid(noise, val.images) > 10 * floor


def _write_random_alexnet(directory: Path, name: str = "alexnet-owt-7be5be79.pth") -> Path:
    # Structurally valid weights with random values: exercises the real loading path.
    # Values computed from them are NOT LPIPS and are only used to check plumbing.
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    torch.save(torchvision.models.alexnet().state_dict(), path)
    return path


def test_lpips_missing_weights_is_a_skip_reason_not_a_value():
    assert weights.lpips_backbone_weights("alex") is None
    with pytest.raises(pretrained.WeightsUnavailable, match="alexnet-owt-7be5be79.pth"):
        pretrained.lpips_metric("alex")
    with pytest.raises(pretrained.WeightsUnavailable, match="fetch-weights"):
        pretrained.inception_fid()


def test_lpips_loads_backbone_from_hub_cache_and_from_a_configured_path(tmp_path):
    hub_checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    _write_random_alexnet(hub_checkpoints)
    images = torch.rand(2, 1, 32, 32)
    metric = pretrained.lpips_metric("alex")
    metric.update(pretrained.to_three_channels(images), pretrained.to_three_channels(images.flip(-1)))
    assert torch.isfinite(metric.compute())

    elsewhere = _write_random_alexnet(tmp_path / "cluster-weights", "my-alexnet.pth")
    (hub_checkpoints / "alexnet-owt-7be5be79.pth").unlink()
    hub_before = torch.hub.get_dir()
    loss = pretrained.LPIPSLoss("alex", backbone_weights=str(elsewhere))
    assert torch.hub.get_dir() == hub_before  # the temporary hub dir is undone
    prediction = (torch.rand(2, 1, 32, 32) * 2 - 1).requires_grad_()
    value = loss(prediction, torch.rand(2, 1, 32, 32) * 2 - 1)
    value.backward()
    assert prediction.grad is not None and prediction.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in loss.parameters())  # frozen: never trained

    with pytest.raises(MetricWeightsError, match="metrics.lpips_backbone_weights"):
        weights.lpips_backbone_weights("alex", str(tmp_path / "missing.pth"))


def test_strict_mode_turns_a_skip_into_an_error(compose_cfg):
    from hydra.utils import instantiate

    cfg = compose_cfg(["experiment=mnist_one_step", "model.network.hidden_channels=8", "model.metrics.strict=true"])
    model = instantiate(cfg.model, _recursive_=False)
    with pytest.raises(MetricWeightsError, match="strict"):
        model.add_pretrained_metric("fid_inception", pretrained.inception_fid)
    cfg = compose_cfg(["experiment=mnist_one_step", "model.network.hidden_channels=8"])
    model = instantiate(cfg.model, _recursive_=False)
    assert model.add_pretrained_metric("fid_inception", pretrained.inception_fid) is None
    assert "fetch-weights" in model.skipped_metrics["fid_inception"]


def test_linear_probe_separates_separable_data_and_not_random_labels():
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (600,), generator=generator)
    centres = torch.randn(3, 20, generator=generator) * 3
    features = centres[labels] + torch.randn(600, 20, generator=generator)
    assert linear_probe_accuracy(features[:400], labels[:400], features[400:], labels[400:]) > 0.95
    shuffled = labels[torch.randperm(600, generator=generator)]
    assert linear_probe_accuracy(features[:400], shuffled[:400], features[400:], shuffled[400:]) < 0.6


def test_wandb_is_offline_only_when_nothing_is_configured(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.setenv("NETRC", str(tmp_path / ".netrc"))
    assert wandb_offline() is True
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_offline() is False
    monkeypatch.delenv("WANDB_API_KEY")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_offline() is False  # W&B follows WANDB_MODE itself


def _write_random_inception(path: Path) -> Path:
    """Structurally valid FID-Inception weights with random values (plumbing only, never FID)."""
    import torch_fidelity.feature_extractor_inceptionv3 as fidelity

    original = fidelity.FeatureExtractorInceptionV3.load_state_dict
    fidelity_load = fidelity.load_state_dict_from_url
    try:
        fidelity.load_state_dict_from_url = lambda *a, **k: None
        fidelity.FeatureExtractorInceptionV3.load_state_dict = lambda self, state: None
        network = fidelity.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    finally:
        fidelity.FeatureExtractorInceptionV3.load_state_dict = original
        fidelity.load_state_dict_from_url = fidelity_load
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(network.state_dict(), path)
    return path


def test_inception_fid_loads_weights_from_hub_cache_and_configured_path(tmp_path):
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    cached = _write_random_inception(hub / weights.INCEPTION_URL.rsplit("/", 1)[-1])
    assert weights.inception_weights() == cached
    metric = pretrained.inception_fid()
    images = torch.rand(4, 3, 32, 32)
    metric.update(images, real=True)
    metric.update(images.flip(-1), real=False)
    assert torch.isfinite(metric.compute())
    elsewhere = cached.rename(tmp_path / "inception.pth")
    assert weights.inception_weights() is None
    assert isinstance(pretrained.inception_fid(str(elsewhere)), FrechetInceptionDistance)


def test_lpips_training_loss_stays_out_of_checkpoints_and_optimizer(compose_cfg):
    from hydra.utils import instantiate

    _write_random_alexnet(Path(torch.hub.get_dir()) / "checkpoints")  # plumbing only, not LPIPS
    cfg = compose_cfg(["experiment=mnist_one_step", "model.network.hidden_channels=8", "model.perceptual=lpips",
                       "model.metrics.domain_classifier=null"])
    model = instantiate(cfg.model, _recursive_=False)
    keys_before = set(model.state_dict())
    params_before = sum(p.numel() for p in model.parameters())
    model.setup_metrics()
    assert model.perceptual_loss is not None and model.perceptual_name == "lpips-alex"
    assert set(model.state_dict()) == keys_before  # nothing LPIPS in checkpoints or the EMA copy
    assert sum(p.numel() for p in model.parameters()) == params_before  # nor in the optimizer
    batch = {"image": torch.rand(2, 1, 32, 32) * 2 - 1, "index": torch.arange(2)}
    model.train()
    terms = model.model_step(batch)
    terms["loss"].backward()
    assert all(p.grad is None for p in model.perceptual_loss.parameters())
