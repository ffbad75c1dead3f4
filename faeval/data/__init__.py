"""LightningDataModules: every data set in memory, normalised per batch on the device."""

from faeval.data.base import InMemoryDataModule, TensorBatches
from faeval.data.cifar import CIFAR10, CIFAR100
from faeval.data.fashion_mnist import FashionMNIST
from faeval.data.synthetic import SyntheticLadder

__all__ = [
    "CIFAR10",
    "CIFAR100",
    "FashionMNIST",
    "InMemoryDataModule",
    "SyntheticLadder",
    "TensorBatches",
]
