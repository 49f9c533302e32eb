"""The module ``kerasopt.Adamax`` lived in before the registry; the class is built from its
spec in :mod:`kerasopt.optimizers`."""

from kerasopt.optimizers import CLASSES

Adamax = CLASSES["Adamax"]
