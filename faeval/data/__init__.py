"""LightningDataModules: faeval's data sets in memory, normalised per batch on the device, and
the contract (shape, class count, probe) that any data module meets."""

from faeval.data.base import InMemoryDataModule, TensorBatches
from faeval.data.cifar import CIFAR10, CIFAR100
from faeval.data.contract import input_shape_of, num_classes_of, probe_batch
from faeval.data.fashion_mnist import FashionMNIST
from faeval.data.synthetic import SyntheticLadder

__all__ = [
    "CIFAR10",
    "CIFAR100",
    "FashionMNIST",
    "InMemoryDataModule",
    "SyntheticLadder",
    "TensorBatches",
    "input_shape_of",
    "num_classes_of",
    "probe_batch",
]
