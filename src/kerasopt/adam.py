"""The module ``kerasopt.Adam`` lived in before the registry; the class is built from its
spec in :mod:`kerasopt.optimizers`."""

from kerasopt.optimizers import CLASSES

Adam = CLASSES["Adam"]
