"""A small MNIST classifier whose features stand in for Inception's when those are offline, and its FID.

FID needs a feature network. Inception's weights cannot be downloaded here, and Inception
features of 32x32 digits are a poor fit anyway; a CNN trained on the training split to
classify digits gives features that track what matters for digits. Its FID is reported as
``fid_mnist_classifier`` (never plain FID) next to its test accuracy and the real-vs-real
floor, so the number is read as what it is.

The classifier trains in a few seconds on CPU and is cached on disk, keyed by a hash of the
training data and of the recipe below. The training loop is deliberately a plain one: it
runs inside another run's setup, where a nested Trainer would fight the outer one for the
process group.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torchmetrics.image.fid import FrechetInceptionDistance

from lit_linearizer.images import from_unit_range, to_unit_range

__all__ = ["DigitClassifier", "DigitFeatures", "accuracy", "digit_fid", "load_or_train_classifier", "train_classifier"]

RECIPE_VERSION = "digit-cnn-v1"
IMAGE_SIZE = 32


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


class DigitFeatures(nn.Module):
    """FID feature extractor for torchmetrics: images in [0, 1] -> (B, 128) classifier features."""

    def __init__(self, classifier: DigitClassifier):
        super().__init__()
        self.classifier = classifier.eval().requires_grad_(False)
        self.num_features = DigitClassifier.feature_dim

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


def train_classifier(images: Tensor, labels: Tensor, epochs: int = 8, seed: int = 0) -> DigitClassifier:
    """Adam, batch 128, light random shifts; CPU, deterministic for a given seed."""
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        classifier = DigitClassifier()
    optimizer = torch.optim.Adam(classifier.parameters(), lr=1e-3)
    x_all = _to_classifier_input(images)
    classifier.train()
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
    return classifier.eval()


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
    path = Path(cache_dir) / f"digit_classifier_{_cache_key(train_images, train_labels, epochs, seed)}.pt"
    classifier = DigitClassifier()
    if path.is_file():
        classifier.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    else:
        classifier = train_classifier(train_images, train_labels, epochs, seed)
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
    return metric, references
