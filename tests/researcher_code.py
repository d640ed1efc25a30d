"""Model code as researchers write it, for the import tests: a file of their own, not part of imgserve.

The tests import weights saved from these classes with `--arch tests/researcher_code.py:NAME`, the way
a researcher names their own `mynet.py`.
"""

from __future__ import annotations

import torch
import torchvision
from torch import nn


class Net(nn.Module):
    """A small CNN of the researcher's own, any input size (adaptive pooling)."""

    def __init__(self, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 5, stride=2),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class Digits(nn.Module):
    """MNIST-style: 1 x 28 x 28 gray input, log-softmax output."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, 8, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 16, 3), nn.ReLU(), nn.MaxPool2d(2)
        )
        self.fc = nn.Linear(16 * 5 * 5, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(self.fc(self.conv(x).flatten(1)), dim=1)


class At128(nn.Module):
    """Trained at 128 px: its flattened features fit that size only."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(3, 8, 5, stride=4), nn.ReLU(), nn.MaxPool2d(2))
        self.fc = nn.Linear(8 * 15 * 15, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).flatten(1))


def resnet18_with_new_head(num_classes: int = 5) -> nn.Module:
    """The most common transfer-learning change: torchvision's ResNet-18 with a dropout + linear head."""
    model = torchvision.models.resnet18()
    model.fc = nn.Sequential(nn.Dropout(0.5), nn.Linear(512, num_classes))
    return model


class Redness(nn.Module):
    """A binary classifier as written for BCELoss: one output, torch.sigmoid in forward (or, for
    BCEWithLogitsLoss, the bare logit). Fixed weights: 4 x (mean red - mean blue), so a red image is
    'red' with probability sigmoid(4) and a blue one is not."""

    def __init__(self, ends_in_sigmoid: bool = True) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(3, 1)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[4.0, 0.0, -4.0]]))
            self.fc.bias.zero_()
        self.ends_in_sigmoid = ends_in_sigmoid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logit = self.fc(self.pool(x).flatten(1))
        return torch.sigmoid(logit) if self.ends_in_sigmoid else logit


class Primaries(nn.Module):
    """A multi-label classifier as written for BCEWithLogitsLoss: one bare logit per primary colour, each
    present or not on its own. Fixed weights: 4 x (mean of the channel) - 2, so a red image is 'red' with
    probability sigmoid(2) and 'green', 'blue' with sigmoid(-2). `ends_in_softmax`: one class per image."""

    def __init__(self, ends_in_softmax: bool = False) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(3, 3)
        with torch.no_grad():
            self.fc.weight.copy_(4 * torch.eye(3))
            self.fc.bias.fill_(-2.0)
        self.ends_in_softmax = ends_in_softmax

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.fc(self.pool(x).flatten(1))
        return torch.softmax(logits, dim=1) if self.ends_in_softmax else logits


class OneAtATime(nn.Module):
    """Written for one image: `x.view(1, -1)` fixes the batch at 1 (a beginner's flatten)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.fc = nn.Linear(8 * 16 * 16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).view(1, -1))


class WithFeatures(Net):
    """Returns (class scores, features), as research code often does for a second loss."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.features(x)
        return self.head(features), features


class HeadFirst(nn.Module):
    """A CIFAR net whose classifier is declared before its convolutions (32 x 32 RGB)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16 * 8 * 8, 10)  # 1024 inputs: also a flattened 32 x 32 gray image
        self.conv = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).flatten(1))


class SmallDenseNet(nn.Module):
    """CheXNet's layout (torchvision's DenseNet under an attribute of the researcher's class), small."""

    def __init__(self) -> None:
        super().__init__()
        self.densenet = torchvision.models.DenseNet(growth_rate=8, block_config=(2, 2), num_init_features=16)
        self.densenet.classifier = nn.Linear(self.densenet.classifier.in_features, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.densenet(x)


class TrainingConfig:
    """A training run's settings, kept in its checkpoint beside the weights (`'config': config`)."""

    def __init__(self, lr: float = 0.1, epochs: int = 30) -> None:
        self.lr, self.epochs = lr, epochs


class OnTheGpu(Net):
    """Keeps the device it was trained on, as code written for a GPU does, and moves its input there."""

    def __init__(self, num_classes: int = 10, hard_coded: bool = False) -> None:
        super().__init__(num_classes)
        self.device = torch.device("cuda")
        self.hard_coded = hard_coded

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.cuda() if self.hard_coded else x.to(self.device))


class LogitsAndFeatures(Net):
    """Returns {"logits": ..., "features": ...}, as Hugging Face-style heads do."""

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.features(x)
        return {"logits": self.head(features), "features": features}


class RednessSqueezed(Redness):
    """Redness whose forward squeezes its one output away, shape (batch,), as BCE training code often does."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x).squeeze()


class DropsAtInference(Net):
    """Dropout as F.dropout(x, p), whose training=True is the default: random in eval mode too."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.nn.functional.dropout(self.features(x), 0.5))


class RedAbove(Redness):
    """A binary classifier of the mean red: logit 4 x (mean red - threshold), bare (BCEWithLogitsLoss)."""

    def __init__(self, threshold: float = 0.5) -> None:
        super().__init__(ends_in_sigmoid=False)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[4.0, 0.0, 0.0]]))
            self.fc.bias.fill_(-4.0 * threshold)


class MapsAndScores(Net):
    """Returns (feature maps, class scores): the scores second, as code that visualises its features writes it."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        maps = self.features[:4](x)
        return maps, self.head(self.features[4:](maps))


class OutAndAux(Net):
    """Returns {"out": scores, "aux": feature maps}, torchvision's segmentation models' keys: no 'logits'."""

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        maps = self.features[:4](x)
        return {"aux": maps, "out": self.head(self.features[4:](maps))}


class Decides(Net):
    """Returns the class number, argmax of its scores, as a forward written for a demo app does."""

    def __init__(self, num_classes: int = 10, keepdim: bool = False) -> None:
        super().__init__(num_classes)
        self.keepdim = keepdim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x).argmax(1, keepdim=self.keepdim)


class ConvHead(nn.Module):
    """All-convolutional: a 1 x 1 convolution to the classes, pooled, no flatten: scores of shape (N, C, 1, 1)."""

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU())
        self.classifier = nn.Sequential(nn.Conv2d(8, num_classes, 1), nn.AdaptiveAvgPool2d(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class Standardized(Net):
    """Standardises each photo by its own mean and spread per channel first: NaN for a photo of one colour,
    without the epsilon (`eps`) that keeps it a number."""

    def __init__(self, num_classes: int = 10, eps: float = 0.0) -> None:
        super().__init__(num_classes)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spread = x.std((2, 3), keepdim=True) + self.eps
        return super().forward((x - x.mean((2, 3), keepdim=True)) / spread)
