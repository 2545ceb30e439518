"""A small MNIST classifier whose features stand in for Inception's when those are offline, and its FID.

FID needs a feature network. Inception's weights cannot be downloaded here, and Inception
features of 32x32 digits are a poor fit anyway; a CNN trained on the training split to
classify digits gives features that track what matters for digits. Its FID is reported as
``fid_mnist_classifier`` (never plain FID) next to its test accuracy and the real-vs-real
floor, so the number is read as what it is.

The classifier trains once (about a minute on CPU, with a progress bar) and is cached on disk,
keyed by a hash of the training data and of the recipe below. The recipe is deterministic:
one CPU thread and deterministic algorithms inside the training function (the caller's
settings are restored), so the same data gives the same weights whatever the caller's thread
count. The number is reported with ``weights_sha256`` of the classifier it was computed with
(metrics.json, loggers). The training loop is deliberately a plain one: it runs inside another
run's setup, where a nested Trainer would fight the outer one for the process group.

Outside the platform, torch-fidelity computes the same FID on folders of PNGs with
``register_torch_fidelity()`` (``DigitFeatureExtractor`` on the cached weights file).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torchmetrics.image.fid import FrechetInceptionDistance
from tqdm.auto import tqdm

from lit_linearizer.images import from_unit_range, to_unit_range, uint8_to_unit_range

__all__ = [
    "TORCH_FIDELITY_NAME",
    "DigitClassifier",
    "DigitFeatureExtractor",
    "DigitFeatures",
    "accuracy",
    "classifier_path",
    "digit_fid",
    "load_or_train_classifier",
    "register_torch_fidelity",
    "train_classifier",
    "weights_sha256",
]

log = logging.getLogger(__name__)

# v2: one thread and deterministic algorithms (v1 weights depended on the machine's thread count).
RECIPE_VERSION = "digit-cnn-v2"
IMAGE_SIZE = 32
TRAINING_THREADS = 1
TORCH_FIDELITY_NAME = "lit-linearizer-digit-classifier"


class DigitClassifier(nn.Module):
    """conv32 -> pool -> conv64 -> pool -> fc128 -> fc10 on 1 x 32 x 32 images in [-1, 1]."""

    feature_dim = 128

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * 8 * 8, self.feature_dim),
            nn.ReLU(),
        )
        self.head = nn.Linear(self.feature_dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def weights_sha256(module: nn.Module) -> str:
    """SHA-256 of a module's state_dict: every name, dtype, shape and value byte, in order (not of a file)."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}:".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class DigitFeatures(nn.Module):
    """FID feature extractor for torchmetrics: images in [0, 1] -> (B, 128) classifier features."""

    def __init__(self, classifier: DigitClassifier):
        super().__init__()
        self.classifier = classifier.eval().requires_grad_(False)
        self.num_features = DigitClassifier.feature_dim
        self.weights_sha256 = weights_sha256(self.classifier)

    def forward(self, images: Tensor) -> Tensor:
        x = images.float()
        if x.shape[1] == 3:
            x = x.mean(dim=1, keepdim=True)
        if x.shape[-2:] != (IMAGE_SIZE, IMAGE_SIZE):
            x = F.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", antialias=True, align_corners=False)
        return self.classifier.features(from_unit_range(x))


def _to_classifier_input(images: Tensor) -> Tensor:
    """Images in [-1, 1], any size -> (B, 1, 32, 32) in [-1, 1]."""
    if images.shape[-2:] != (IMAGE_SIZE, IMAGE_SIZE):
        images = F.interpolate(images, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", antialias=True)
    return images.float()


def _cache_key(images: Tensor, labels: Tensor, epochs: int, seed: int) -> str:
    digest = hashlib.sha256()
    digest.update(RECIPE_VERSION.encode())
    digest.update(f"{epochs}-{seed}-{tuple(images.shape)}".encode())
    digest.update(images.float().contiguous().numpy().tobytes())
    digest.update(labels.contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


@torch.no_grad()
def accuracy(classifier: DigitClassifier, images: Tensor, labels: Tensor, batch_size: int = 500) -> float:
    classifier.eval()
    correct = 0
    for i in range(0, len(images), batch_size):
        logits = classifier(_to_classifier_input(images[i : i + batch_size]))
        correct += int((logits.argmax(1) == labels[i : i + batch_size]).sum())
    return correct / len(images)


@contextlib.contextmanager
def reproducible_cpu(threads: int = TRAINING_THREADS) -> Iterator[None]:
    """``threads`` intra-op threads and deterministic algorithms inside; the caller's settings restored after.

    Float sums split over threads round differently for each thread count, so weights trained with the
    machine's default thread count differ from machine to machine; with a fixed count they do not.
    """
    previous_threads = torch.get_num_threads()
    previous_deterministic = torch.are_deterministic_algorithms_enabled()
    previous_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous_deterministic, warn_only=previous_warn_only)
        torch.set_num_threads(previous_threads)


def train_classifier(
    images: Tensor, labels: Tensor, epochs: int = 8, seed: int = 0, progress: bool = False
) -> DigitClassifier:
    """Adam, batch 128, light random shifts, on CPU: the same weights for the same data and seed, whatever the
    caller's thread count (``reproducible_cpu``). ``progress``: a progress bar over the batches."""
    images, labels = images.detach().cpu(), labels.detach().cpu()
    with reproducible_cpu(), torch.enable_grad():
        generator = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            classifier = DigitClassifier()
        optimizer = torch.optim.Adam(classifier.parameters(), lr=1e-3)
        x_all = _to_classifier_input(images)
        classifier.train()
        batches = -(-len(x_all) // 128)
        bar = tqdm(total=epochs * batches, desc="digit classifier", unit="batch", disable=not progress, mininterval=2)
        for _ in range(epochs):
            order = torch.randperm(len(x_all), generator=generator)
            for i in range(0, len(order), 128):
                idx = order[i : i + 128]
                x = x_all[idx]
                shift = torch.randint(-2, 3, (2,), generator=generator).tolist()
                x = torch.roll(x, shifts=shift, dims=(-2, -1))
                loss = F.cross_entropy(classifier(x), labels[idx])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                bar.update()
        bar.close()
    return classifier.eval()


def classifier_path(
    cache_dir: str | Path, train_images: Tensor, train_labels: Tensor, epochs: int = 8, seed: int = 0
) -> Path:
    """Where the classifier for this training split and recipe is cached."""
    key = _cache_key(train_images.cpu(), train_labels.cpu(), epochs, seed)
    return Path(cache_dir) / f"digit_classifier_{key}.pt"


def load_or_train_classifier(
    train_images: Tensor,
    train_labels: Tensor,
    test_images: Tensor,
    test_labels: Tensor,
    cache_dir: str | Path,
    epochs: int = 8,
    seed: int = 0,
) -> tuple[DigitClassifier, float]:
    """The cached classifier for this training split (training it first if needed) and its test accuracy."""
    train_images, train_labels = train_images.cpu(), train_labels.cpu()
    path = classifier_path(cache_dir, train_images, train_labels, epochs, seed)
    classifier = DigitClassifier()
    if path.is_file():
        classifier.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    else:
        size = "x".join(str(s) for s in train_images.shape[-2:])
        log.warning(
            "fid_mnist_classifier: training its digit classifier on %d images of %s (first use of this data and "
            "recipe; about a minute on CPU, once: cached as %s)", len(train_images), size, path,
        )
        started = time.time()
        classifier = train_classifier(train_images, train_labels, epochs, seed, progress=True)
        log.warning("fid_mnist_classifier: digit classifier trained in %.0f s", time.time() - started)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(classifier.state_dict(), tmp)
        tmp.replace(path)
    return classifier.eval(), accuracy(classifier, test_images.cpu(), test_labels.cpu())


def digit_fid(
    train_images: Tensor,
    train_labels: Tensor,
    val_images: Tensor,
    val_labels: Tensor,
    cache_dir: str | Path,
    leader: bool = True,
    barrier: Callable[[], None] | None = None,
) -> tuple[FrechetInceptionDistance, dict[str, float]]:
    """``fid_mnist_classifier``: an empty FID in the digit classifier's feature space, and what to read it against.

    The classifier is trained on the training split (or loaded from ``cache_dir``). The references
    are its test accuracy (``mnist_classifier_accuracy``) and the real-vs-real FID of the two splits
    (``fid_mnist_classifier_floor``). Images are in [-1, 1]; the metric takes [0, 1], like every FID here.
    The metric says which classifier it uses: ``metric.weights_sha256`` and ``metric.weights_file``.
    Several processes (DDP): pass ``barrier``; the ``leader`` trains and caches the classifier first.
    """
    if barrier is not None:
        if leader:
            load_or_train_classifier(train_images, train_labels, val_images, val_labels, cache_dir)
        barrier()
    classifier, test_accuracy = load_or_train_classifier(train_images, train_labels, val_images, val_labels, cache_dir)
    size = (1, IMAGE_SIZE, IMAGE_SIZE)
    floor = FrechetInceptionDistance(feature=DigitFeatures(classifier), normalize=True, input_img_size=size)
    floor.update(to_unit_range(train_images), real=True)
    floor.update(to_unit_range(val_images), real=False)
    references = {"mnist_classifier_accuracy": test_accuracy, "fid_mnist_classifier_floor": float(floor.compute())}
    metric = FrechetInceptionDistance(feature=DigitFeatures(classifier), normalize=True, input_img_size=size)
    metric.weights_sha256 = weights_sha256(classifier)
    metric.weights_file = str(classifier_path(cache_dir, train_images, train_labels))
    return metric, references


class DigitFeatureExtractor(FeatureExtractorBase):
    """The digit classifier's 128 features as a torch-fidelity feature extractor (uint8 RGB images in).

    torch-fidelity builds it with ``feature_extractor_weights_path=<digit_classifier_*.pt>`` (the file
    ``metrics.json`` names, ``metric_info.fid_mnist_classifier_weights_file``); see ``register_torch_fidelity``.
    """

    def __init__(self, name: str, features_list, feature_extractor_weights_path: str | None = None, **kwargs):
        super().__init__(name, features_list)
        if feature_extractor_weights_path is None:
            raise ValueError(f"{name} needs feature_extractor_weights_path=<digit_classifier_*.pt>")
        classifier = DigitClassifier()
        classifier.load_state_dict(torch.load(feature_extractor_weights_path, map_location="cpu", weights_only=True))
        self.features = DigitFeatures(classifier)

    @staticmethod
    def get_provided_features_list():
        return ("features",)

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return "features"

    @staticmethod
    def can_be_compiled():
        return False

    @staticmethod
    def get_dummy_input_for_compile():
        return torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.uint8)

    def forward(self, images: Tensor):
        return (self.features(uint8_to_unit_range(images)),)


def register_torch_fidelity(name: str = TORCH_FIDELITY_NAME) -> str:
    """Register ``DigitFeatureExtractor`` with torch-fidelity (once) and return its name.

    Example (FID of two folders of PNGs, on CPU, as the platform computes ``fid_mnist_classifier``)::

        torch_fidelity.calculate_metrics(
            input1="generated/", input2="real/", fid=True, cuda=False, cache=False,
            feature_extractor=register_torch_fidelity(), feature_extractor_weights_path="digit_classifier_<key>.pt",
        )["frechet_inception_distance"]
    """
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

    if name not in FEATURE_EXTRACTORS_REGISTRY:
        register_feature_extractor(name, DigitFeatureExtractor)
    return name
