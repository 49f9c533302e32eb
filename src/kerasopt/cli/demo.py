"""``kerasopt demo``: the same model trained by Keras 3, by PyTorch with kerasopt, and by
PyTorch with torch.optim, with the Keras features a user turns on; how far each lands from
Keras and what its optimizer step costs.

The data set is the 8x8 handwritten digits (1797 images, 10 classes) that ships inside the
package (``kerasopt/data/digits.csv.gz``; origin and licence in
``kerasopt/data/LICENSE-digits.txt``), so nothing is downloaded. Every run starts from the
same initial weights and sees the same mini-batches in the same order.

Per algorithm (Adamax; Adam with ``amsgrad=True``) three runs:

* ``keras-*``: a Keras 3 model (two ``Dense`` layers) on Keras's torch backend with
  ``keras.optimizers.Adamax`` / ``Adam``, trained by the custom loop of Keras's guide for
  PyTorch (``loss.backward()``, then ``optimizer.apply(grads, model.trainable_variables)``);
* ``kerasopt-*``: the same network as plain PyTorch (``nn.Linear``) with
  ``kerasopt.torch.Adamax`` / ``Adam`` given the very same arguments;
* ``torch-*``: plain PyTorch with torch.optim, configured as a careful user would
  (:func:`torch_optim_recipe` says how), since torch.optim has no such arguments.

The Keras features on in every run (:class:`Recipe`): a cosine-decay schedule, ``clipnorm``,
decoupled weight decay with the biases excluded, EMA with periodic overwrite (the EMA
weights are copied in at the end, as ``model.fit`` does), and gradient accumulation.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import math
import os
import re
import sys
import textwrap
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from kerasopt.cli.common import check_output_directory, positive_int

ALGORITHMS = ("adamax", "adam")
IMPLEMENTATIONS = ("keras", "kerasopt", "torch")
OPTIMIZERS = tuple(f"{impl}-{algo}" for algo in ALGORITHMS for impl in IMPLEMENTATIONS)
KERAS_CLASS = {"adamax": "Adamax", "adam": "Adam"}
DEFAULT_EPOCHS = 20
DEFAULT_LEARNING_RATE = 0.01
DEFAULT_BATCH_SIZE = 32
DEFAULT_SEED = 0
DEFAULT_OUTPUT = "kerasopt-demo-output"
PLOT_NAME = "loss_curves.png"
TEST_FRACTION = 0.2
SPLIT_SEED = 20240601  # the train/test split is fixed, whatever --seed is
HIDDEN_UNITS = 64
EXACT_FLOOR = 1e-10  # where the divergence plot draws a difference of exactly 0
KERAS_VERSION = "3.15.1"


@dataclass(frozen=True)
class Recipe:
    """The Keras features every run turns on (Keras's names and meanings)."""

    learning_rate: float = DEFAULT_LEARNING_RATE  # CosineDecay's initial rate
    alpha: float = 0.1  # CosineDecay's floor, as a fraction of the initial rate
    clipnorm: float = 1.0
    weight_decay: float = 0.004
    exclude_from_weight_decay: tuple[str, ...] = ("bias",)
    ema_momentum: float = 0.95
    ema_overwrite_frequency: int = 100
    gradient_accumulation_steps: int = 2

    def optimizer_arguments(self, algorithm: str) -> dict[str, Any]:
        """The constructor arguments besides the learning rate, shared by Keras and
        kerasopt."""
        arguments: dict[str, Any] = dict(
            clipnorm=self.clipnorm,
            weight_decay=self.weight_decay,
            use_ema=True,
            ema_momentum=self.ema_momentum,
            ema_overwrite_frequency=self.ema_overwrite_frequency,
            gradient_accumulation_steps=self.gradient_accumulation_steps,
        )
        if algorithm == "adam":
            arguments["amsgrad"] = True
        return arguments

    def describe(self, micro_steps: int) -> str:
        excluded = ", ".join(self.exclude_from_weight_decay)
        return (
            f"learning_rate=CosineDecay({self.learning_rate:g}, decay_steps={micro_steps}, "
            f"alpha={self.alpha:g}), clipnorm={self.clipnorm:g}, "
            f"weight_decay={self.weight_decay:g} (excluding {excluded}), "
            f"use_ema=True, ema_momentum={self.ema_momentum:g}, "
            f"ema_overwrite_frequency={self.ema_overwrite_frequency}, "
            f"gradient_accumulation_steps={self.gradient_accumulation_steps}"
        )


def torch_optim_recipe(algorithm: str, recipe: Recipe | None = None) -> str:
    """How the ``torch-*`` runs translate ``recipe`` (printed by ``--help``)."""
    recipe = recipe or Recipe()
    optimizer = (
        "torch.optim.Adamax(eps=1e-7; its weight_decay is an L2 term added to the gradient: "
        "torch.optim has no decoupled Adamax)"
        if algorithm == "adamax"
        else "torch.optim.AdamW(amsgrad=True, eps=1e-7; decoupled decay as in Keras)"
    )
    return (
        f"{optimizer}, weight decay in a param group without the biases; the loss divided "
        f"by the accumulation steps and step() every {recipe.gradient_accumulation_steps} "
        "batches; torch.nn.utils.clip_grad_norm_ on each parameter before the step; LambdaLR "
        "with the same cosine decay, stepped per update; EMA with "
        "torch.optim.swa_utils.AveragedModel(multi_avg_fn=get_ema_multi_avg_fn("
        f"{recipe.ema_momentum:g})), updated after every step, copied into the model every "
        f"{recipe.ema_overwrite_frequency} updates and at the end"
    )


DESCRIPTION = f"""\
Train one small network (an MLP, 64-{HIDDEN_UNITS}-10) on the 8x8 handwritten digits that
ship with kerasopt (1797 images, a fixed 80/20 train/test split; no download), with the
Keras features a user turns on: a cosine-decay schedule, clipnorm, weight decay that
excludes the biases, EMA with overwrite, and gradient accumulation. Per algorithm
(Adamax; Adam with amsgrad) three runs from the same initial weights on the same batches:

  keras-*     Keras 3 on its torch backend, keras.optimizers.Adamax / Adam
  kerasopt-*  plain PyTorch with kerasopt.torch.Adamax / Adam, the same arguments
  torch-*     plain PyTorch with torch.optim, configured as a careful user would:
{textwrap.fill("Adamax: " + torch_optim_recipe("adamax") + ".", 88,
                initial_indent=" " * 14, subsequent_indent=" " * 22,
                break_long_words=False, break_on_hyphens=False)}
{textwrap.fill("Adam: torch.optim.AdamW(amsgrad=True, eps=1e-7), the rest as for Adamax.",
                88, initial_indent=" " * 14, subsequent_indent=" " * 20)}

Prints a progress bar per run, then a table (final training loss and test accuracy with
the EMA weights, the largest weight difference from the Keras run, the optimizer's time
per batch, the run's wall time), and writes a plot of the loss curves and of each run's
distance from Keras after every batch (log scale). Runs on the CPU, in well under a minute.

Keras is optional: without it (or with Keras already imported on another backend) the
keras-* runs are skipped and the demo says so. Keras's backend is chosen by KERAS_BACKEND
before Keras is imported; the demo sets it to torch for its own process only and says so
when that overrides your setting (your environment and keras.json are left alone).
"""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``demo`` subcommand to the ``kerasopt`` command line."""
    parser = subparsers.add_parser(
        "demo",
        help="train one model by Keras, by PyTorch with kerasopt and with torch.optim, "
        "with Keras's features on; print how far each lands from Keras; write a plot",
        description=DESCRIPTION,
        formatter_class=_HelpFormatter,
    )
    parser.add_argument(
        "--epochs",
        type=positive_int,
        default=DEFAULT_EPOCHS,
        metavar="N",
        help=f"passes over the training set per run (default: {DEFAULT_EPOCHS})",
    )
    parser.add_argument(
        "--optimizers",
        type=_optimizer_list,
        default=list(OPTIMIZERS),
        metavar="LIST",
        help=f"comma-separated runs, from: {', '.join(OPTIMIZERS)} (default: all six; "
        "the distance from Keras needs the keras run of the same algorithm)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=Path(DEFAULT_OUTPUT),
        metavar="DIR",
        help=f"directory for the plot, created if missing (default: ./{DEFAULT_OUTPUT})",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=DEFAULT_SEED,
        metavar="N",
        help="seed for the initial weights and the mini-batch order, shared by all runs "
        f"(default: {DEFAULT_SEED})",
    )
    parser.add_argument(
        "--learning-rate",
        type=_positive_float,
        default=DEFAULT_LEARNING_RATE,
        metavar="LR",
        help=f"initial rate of the cosine decay (default: {DEFAULT_LEARNING_RATE})",
    )
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=DEFAULT_BATCH_SIZE,
        metavar="N",
        help=f"mini-batch size (default: {DEFAULT_BATCH_SIZE}; two batches make an update)",
    )
    parser.add_argument(
        "--train-samples",
        type=positive_int,
        default=None,
        metavar="N",
        help="train on only the first N training images (default: all of them); for a quicker run",
    )
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=1,
        metavar="N",
        help="CPU threads for torch (default: 1; the model is too small to gain from more, "
        "and extra threads slow it down badly when other programs use the cores)",
    )
    parser.add_argument(
        "--no-progress",
        action="store_true",
        help="do not show progress bars",
    )
    parser.set_defaults(func=run)
    return parser


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description as written; wraps option help without splitting names such as
    ``kerasopt-adamax`` at their hyphens."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        import textwrap

        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text}")
    return value


def _optimizer_list(text: str) -> list[str]:
    names = [name.strip().lower() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated list from {', '.join(OPTIMIZERS)}, got {text!r}"
        )
    unknown = [name for name in names if name not in OPTIMIZERS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown optimizer {', '.join(map(repr, unknown))}; choose from "
            f"{', '.join(OPTIMIZERS)}"
        )
    return list(dict.fromkeys(names))  # drop repeats, keep the order


# --------------------------------------------------------------------------- data


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """The bundled 8x8 digits: images as float32 in [0, 1], shape (1797, 64); labels int64.

    Each row of ``digits.csv.gz`` holds 64 pixel counts (0..16) and then the label.
    """
    import gzip
    from importlib import resources

    source = resources.files("kerasopt").joinpath("data", "digits.csv.gz")
    with source.open("rb") as raw, gzip.open(raw, "rt") as text:
        table = np.loadtxt(text, delimiter=",", dtype=np.float32)
    images = table[:, :-1] / np.float32(16.0)
    labels = table[:, -1].astype(np.int64)
    return images, labels


def split_digits(
    images: np.ndarray, labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A fixed, class-stratified train/test split (the same on every run and machine)."""
    rng = np.random.default_rng(SPLIT_SEED)
    test_index = []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        test_index.append(members[: round(len(members) * TEST_FRACTION)])
    is_test = np.zeros(len(labels), dtype=bool)
    is_test[np.concatenate(test_index)] = True
    train = rng.permutation(np.flatnonzero(~is_test))
    test = np.flatnonzero(is_test)
    return images[train], labels[train], images[test], labels[test]


def make_batches(n_train: int, epochs: int, batch_size: int, seed: int) -> list[list[Any]]:
    """The mini-batch indices of every epoch (shuffled with ``seed``), shared by all runs."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(epochs):
        order = torch.randperm(n_train, generator=generator)
        batches.append(list(order.split(batch_size)))
    return batches


# ------------------------------------------------------------------------ Keras


@dataclass
class KerasStatus:
    """Whether the keras-* runs can happen: ``module`` is Keras on its torch backend, or
    None; ``message`` says what the demo did or why it skips them."""

    module: Any
    message: str


def _configured_keras_backend() -> str | None:
    """The backend named in Keras's config file (``$KERAS_HOME/keras.json``, else
    ``~/.keras/keras.json``), if any; Keras reads it when KERAS_BACKEND is unset."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    try:
        with open(os.path.join(home, "keras.json")) as handle:
            backend = json.load(handle).get("backend")
    except (OSError, ValueError, AttributeError):
        return None
    return backend if isinstance(backend, str) else None


def import_keras() -> KerasStatus:
    """Import Keras 3 on its torch backend, for this process only.

    Keras fixes its backend when it is first imported, from ``KERAS_BACKEND`` (else its
    ``keras.json``). The demo sets ``KERAS_BACKEND=torch`` for that import and restores the
    variable right after, so child processes see the user's value; when that overrides the
    user's choice, the message says so. Keras already imported on another backend (the demo
    called from a program that uses Keras) is left alone and the keras-* runs are skipped.
    """
    if "keras" not in sys.modules and importlib.util.find_spec("keras") is None:
        from kerasopt._install import install_hint

        return KerasStatus(
            None, "Keras is not installed, so the keras-* runs are skipped. "
            + install_hint("demo", packages=["keras"]),
        )
    if "keras" in sys.modules:
        keras = sys.modules["keras"]
        backend = _keras_backend(keras)
        if backend != "torch":
            return KerasStatus(
                None,
                f"Keras is already imported in this process with its {backend!r} backend "
                "(fixed at import), so the keras-* runs are skipped; run `kerasopt demo` in "
                "a process of its own.",
            )
        return KerasStatus(keras, f"Keras {keras.__version__} on its torch backend.")
    previous = os.environ.get("KERAS_BACKEND")
    configured = _configured_keras_backend()
    os.environ["KERAS_BACKEND"] = "torch"
    try:
        import keras
    except Exception as error:  # a broken install: the other runs can still go ahead
        return KerasStatus(None, f"Keras failed to import ({error!r}); keras-* runs skipped.")
    finally:
        if previous is None:
            os.environ.pop("KERAS_BACKEND", None)
        else:
            os.environ["KERAS_BACKEND"] = previous
    backend = _keras_backend(keras)
    if backend != "torch" or not str(getattr(keras, "__version__", "0")).startswith("3."):
        return KerasStatus(
            None,
            f"Keras {getattr(keras, '__version__', '?')} did not load Keras 3's torch backend "
            f"(got {backend!r}), so the keras-* runs are skipped.",
        )
    message = f"Keras {keras.__version__} on its torch backend"
    if previous is not None and previous != "torch":
        message += (
            f" (your KERAS_BACKEND={previous} is overridden for this process only: the "
            "comparison needs Keras on torch)"
        )
    elif previous is None and configured not in (None, "torch"):
        message += (
            f" (your keras.json says {configured!r}; KERAS_BACKEND=torch overrides it for "
            "this process only)"
        )
    elif previous is None:
        message += " (KERAS_BACKEND=torch set for this process only)"
    return KerasStatus(keras, message + ".")


def _keras_backend(keras: Any) -> str:
    try:
        return str(keras.backend.backend())
    except AttributeError:  # not Keras 3
        return "unknown"


# ------------------------------------------------------------------------- runs


def build_model(seed: int) -> Any:
    """The network as plain PyTorch: ``Linear(64, 64), ReLU, Linear(64, 10)``, initialised
    by torch from ``seed``."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(64, HIDDEN_UNITS),
        nn.ReLU(),
        nn.Linear(HIDDEN_UNITS, 10),
    )


def _cosine_factor(step: int, decay_steps: int, alpha: float) -> float:
    """Keras's ``CosineDecay`` (no warm-up) as a fraction of the initial rate."""
    progress = min(step, decay_steps) / decay_steps
    return (1 - alpha) * 0.5 * (1 + math.cos(math.pi * progress)) + alpha


class _Run:
    """One training run: ``backward`` (not timed) and ``step`` (the optimizer's part of a
    batch, timed) per batch; ``flat_weights`` in Keras's layout (kernels ``(in, out)``)."""

    def backward(self, x: Any, y: Any) -> None:
        raise NotImplementedError

    def step(self) -> None:
        raise NotImplementedError

    def finalize(self) -> None:
        raise NotImplementedError

    def logits(self, x: Any) -> Any:
        raise NotImplementedError

    def flat_weights(self, out: Any) -> Any:
        raise NotImplementedError


class _TorchModelRun(_Run):
    def __init__(self, initial_state: dict[str, Any], seed: int) -> None:
        self.model = build_model(seed)
        self.model.load_state_dict(initial_state)
        self.linears = [self.model[0], self.model[2]]

    def logits(self, x: Any) -> Any:
        return self.model(x)

    def flat_weights(self, out: Any) -> Any:
        import torch

        parts = []
        for layer in self.linears:
            parts += [layer.weight.detach().T.reshape(-1), layer.bias.detach()]
        return torch.cat(parts, out=out)


class KerasoptRun(_TorchModelRun):
    """Plain PyTorch with ``kerasopt.torch.<Algorithm>`` given Keras's arguments."""

    def __init__(self, algorithm: str, recipe: Recipe, initial_state: dict[str, Any],
                 micro_steps: int, seed: int) -> None:
        import kerasopt
        import kerasopt.torch as kt

        super().__init__(initial_state, seed)
        schedule = kerasopt.schedules.CosineDecay(
            recipe.learning_rate, decay_steps=micro_steps, alpha=recipe.alpha)
        self.optimizer = getattr(kt, KERAS_CLASS[algorithm])(
            self.model.named_parameters(), learning_rate=schedule,
            **recipe.optimizer_arguments(algorithm))
        self.optimizer.exclude_from_weight_decay(var_names=list(recipe.exclude_from_weight_decay))

    def backward(self, x: Any, y: Any) -> None:
        from torch.nn import functional as F

        F.cross_entropy(self.model(x), y).backward()

    def step(self) -> None:
        self.optimizer.step()
        self.optimizer.zero_grad()

    def finalize(self) -> None:
        self.optimizer.finalize_variable_values()


class TorchOptimRun(_TorchModelRun):
    """Plain PyTorch with torch.optim, translating the recipe as a careful user would (see
    :func:`torch_optim_recipe`)."""

    def __init__(self, algorithm: str, recipe: Recipe, initial_state: dict[str, Any],
                 micro_steps: int, seed: int) -> None:
        import torch
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        super().__init__(initial_state, seed)
        self.recipe = recipe
        excluded = re.compile("|".join(recipe.exclude_from_weight_decay))
        named = list(self.model.named_parameters())
        groups = [
            {"params": [p for n, p in named if not excluded.search(n)],
             "weight_decay": recipe.weight_decay},
            {"params": [p for n, p in named if excluded.search(n)], "weight_decay": 0.0},
        ]
        if algorithm == "adamax":
            self.optimizer = torch.optim.Adamax(groups, lr=recipe.learning_rate, eps=1e-7)
        else:
            self.optimizer = torch.optim.AdamW(
                groups, lr=recipe.learning_rate, eps=1e-7, amsgrad=True)
        n = recipe.gradient_accumulation_steps
        updates = max(1, micro_steps // n)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda update: _cosine_factor(update, updates, recipe.alpha))
        self.ema = AveragedModel(
            self.model, multi_avg_fn=get_ema_multi_avg_fn(recipe.ema_momentum))
        self.micro_steps = 0
        self.updates = 0

    def backward(self, x: Any, y: Any) -> None:
        from torch.nn import functional as F

        (F.cross_entropy(self.model(x), y) / self.recipe.gradient_accumulation_steps).backward()

    def step(self) -> None:
        import torch

        self.micro_steps += 1
        if self.micro_steps % self.recipe.gradient_accumulation_steps:
            return  # keep summing the (divided) gradients
        for p in self.model.parameters():
            torch.nn.utils.clip_grad_norm_(p, self.recipe.clipnorm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad()
        self.ema.update_parameters(self.model)
        self.updates += 1
        if self.updates % self.recipe.ema_overwrite_frequency == 0:
            self.finalize()

    def finalize(self) -> None:
        import torch

        with torch.no_grad():
            for p, average in zip(self.model.parameters(), self.ema.module.parameters(),
                                  strict=True):
                p.copy_(average)


class KerasRun(_Run):
    """A Keras 3 model on Keras's torch backend with ``keras.optimizers.<Algorithm>``,
    trained by the custom loop of Keras's guide for PyTorch."""

    def __init__(self, keras: Any, algorithm: str, recipe: Recipe,
                 initial_state: dict[str, Any], micro_steps: int, seed: int) -> None:
        del seed  # the weights come from ``initial_state``
        self.model = keras.Sequential([
            keras.Input((64,)),
            keras.layers.Dense(HIDDEN_UNITS, activation="relu"),
            keras.layers.Dense(10),
        ])
        self.variables = list(self.model.trainable_variables)
        values = [initial_state["0.weight"].T, initial_state["0.bias"],
                  initial_state["2.weight"].T, initial_state["2.bias"]]
        for variable, value in zip(self.variables, values, strict=True):
            variable.assign(value.numpy())
        schedule = keras.optimizers.schedules.CosineDecay(
            recipe.learning_rate, decay_steps=micro_steps, alpha=recipe.alpha)
        self.optimizer = getattr(keras.optimizers, KERAS_CLASS[algorithm])(
            learning_rate=schedule, **recipe.optimizer_arguments(algorithm))
        self.optimizer.exclude_from_weight_decay(
            var_names=list(recipe.exclude_from_weight_decay))
        self.loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def backward(self, x: Any, y: Any) -> None:
        self.loss(y, self.model(x, training=True)).backward()

    def step(self) -> None:
        import torch

        grads = [v.value.grad for v in self.variables]
        with torch.no_grad():
            self.optimizer.apply(grads, self.variables)
        self.model.zero_grad()

    def finalize(self) -> None:
        self.optimizer.finalize_variable_values(self.variables)

    def logits(self, x: Any) -> Any:
        return self.model(x, training=False)

    def flat_weights(self, out: Any) -> Any:
        import torch

        return torch.cat([v.value.detach().reshape(-1) for v in self.variables], out=out)


def make_run(name: str, recipe: Recipe, initial_state: dict[str, Any], micro_steps: int,
             seed: int, keras: Any = None) -> _Run:
    """The run ``name`` (one of :data:`OPTIMIZERS`); ``keras`` is Keras on its torch backend
    (needed for the keras-* runs)."""
    implementation, _, algorithm = name.partition("-")
    if name not in OPTIMIZERS:
        raise ValueError(f"Unknown optimizer {name!r}; expected one of {', '.join(OPTIMIZERS)}.")
    if implementation == "kerasopt":
        return KerasoptRun(algorithm, recipe, initial_state, micro_steps, seed)
    if implementation == "torch":
        return TorchOptimRun(algorithm, recipe, initial_state, micro_steps, seed)
    if keras is None:
        raise ValueError(f"{name} needs Keras 3 on its torch backend (see import_keras()).")
    return KerasRun(keras, algorithm, recipe, initial_state, micro_steps, seed)


# ------------------------------------------------------------------- training


@dataclass
class RunResult:
    """One run. ``train_loss[e]`` / ``test_accuracy[e]``: with the live weights after epoch
    ``e`` (index 0: the initial weights); ``final_*``: after the EMA weights are copied in.
    ``divergence[k]``: the largest ``|w - w_keras|`` after batch ``k + 1`` (None without the
    keras run of the algorithm); ``final_difference`` the same after the EMA copy."""

    name: str
    train_loss: list[float] = field(default_factory=list)
    test_accuracy: list[float] = field(default_factory=list)
    final_loss: float = math.nan
    final_accuracy: float = math.nan
    divergence: np.ndarray | None = None
    final_difference: float | None = None
    step_seconds: float = 0.0
    steps: int = 0
    seconds: float = 0.0

    @property
    def algorithm(self) -> str:
        return self.name.partition("-")[2]

    @property
    def step_microseconds(self) -> float:
        return 1e6 * self.step_seconds / max(self.steps, 1)


@dataclass
class Reference:
    """The Keras run's weights after every batch and after the EMA copy."""

    trajectory: Any
    final: Any


def _evaluate(run: _Run, images: Any, labels: Any) -> tuple[float, float]:
    import torch
    from torch.nn import functional as F

    with torch.no_grad():
        logits = run.logits(images)
        loss = F.cross_entropy(logits, labels).item()
        accuracy = (logits.argmax(dim=1) == labels).float().mean().item()
    return loss, accuracy


def _parameter_count() -> int:
    return 64 * HIDDEN_UNITS + HIDDEN_UNITS + HIDDEN_UNITS * 10 + 10


def train_one(
    name: str,
    run: _Run,
    batches: list[list[Any]],
    data: tuple[Any, Any, Any, Any],
    reference: Reference | None,
    progress: bool,
    keep_trajectory: bool = False,
) -> tuple[RunResult, Reference | None]:
    """Train ``run`` on ``batches`` (one list of index tensors per epoch); compare its
    weights with ``reference`` after every batch. With ``keep_trajectory`` (the keras run)
    also return its own weights as a :class:`Reference` for the others."""
    import torch
    from tqdm import tqdm

    x_train, y_train, x_test, y_test = data
    result = RunResult(name)
    steps = sum(len(epoch) for epoch in batches)
    size = _parameter_count()
    trajectory = torch.empty(steps, size) if keep_trajectory else None
    weights = torch.empty(size)
    scratch = torch.empty(size)
    divergence = torch.empty(steps, dtype=torch.float64) if reference is not None else None

    def record() -> None:
        result.train_loss.append(_evaluate(run, x_train, y_train)[0])
        result.test_accuracy.append(_evaluate(run, x_test, y_test)[1])

    record()
    bar = tqdm(total=steps, desc=f"{name:<15}", unit="batch", disable=not progress,
               leave=True, dynamic_ncols=True, file=sys.stderr)
    # As timeit does: no garbage collection inside the timed loop (a pass over the objects
    # an earlier run left behind, Keras's above all, would land on whichever run is timed).
    gc.collect()
    collecting = gc.isenabled()
    gc.disable()
    start = time.perf_counter()
    k = 0
    try:
        for epoch, epoch_batches in enumerate(batches, start=1):
            for index in epoch_batches:
                run.backward(x_train[index], y_train[index])
                began = time.perf_counter()
                run.step()
                result.step_seconds += time.perf_counter() - began
                if trajectory is not None:
                    run.flat_weights(trajectory[k])
                if divergence is not None:
                    run.flat_weights(weights)
                    torch.sub(weights, reference.trajectory[k], out=scratch)
                    divergence[k] = scratch.abs_().max()
                k += 1
                bar.update(1)
            record()
            bar.set_postfix(epoch=f"{epoch}/{len(batches)}",
                            loss=f"{result.train_loss[-1]:.4f}",
                            test_acc=f"{result.test_accuracy[-1]:.1%}", refresh=False)
        run.finalize()
        result.final_loss = _evaluate(run, x_train, y_train)[0]
        result.final_accuracy = _evaluate(run, x_test, y_test)[1]
    finally:
        if collecting:
            gc.enable()
        bar.close()
    result.seconds = time.perf_counter() - start
    result.steps = steps
    final = run.flat_weights(torch.empty(size))
    if reference is not None:
        result.divergence = divergence.numpy()
        result.final_difference = float((final - reference.final).abs().max())
    if not math.isfinite(result.final_loss):
        print(f"warning: {name}: the training loss is not finite; try a lower --learning-rate.")
    own = Reference(trajectory, final) if keep_trajectory else None
    return result, own


def _warm_up(names: Sequence[str], recipe: Recipe, initial_state: dict[str, Any],
             data: tuple[Any, Any, Any, Any], seed: int, keras: Any) -> None:
    """Two untimed updates of every run kind (one with an EMA overwrite) on throwaway
    models, so the timed runs do not pay one-off costs: torch's (thread pool, allocator),
    Keras's (building its optimizer) and kerasopt's (compiling its kernels on the very
    first run, loading them from numba's cache afterwards)."""
    warm = replace(recipe, ema_overwrite_frequency=2)
    x, y = data[0][:DEFAULT_BATCH_SIZE], data[1][:DEFAULT_BATCH_SIZE]
    for name in names:
        run = make_run(name, warm, initial_state, 100, seed, keras)
        for _ in range(2 * warm.gradient_accumulation_steps):
            run.backward(x, y)
            run.step()
        run.finalize()
        _evaluate(run, x, y)


# ---------------------------------------------------------------------- output


def _number(value: float | None, spec: str) -> str:
    return "-" if value is None or not math.isfinite(value) else format(value, spec)


TABLE_HEADER = ("run", "final loss", "test accuracy", "max |w - Keras|",
                "optimizer us/batch", "wall time")


def format_table(results: list[RunResult]) -> str:
    """The comparison table, one row per run."""
    rows = [
        (
            r.name,
            _number(r.final_loss, ".4f"),
            _number(100 * r.final_accuracy, ".2f") + "%",
            ("0 (identical)" if r.final_difference == 0 else _number(r.final_difference, ".1e"))
            if not r.name.startswith("keras-") else "(reference)",
            _number(r.step_microseconds, ".0f"),
            f"{r.seconds:.2f} s",
        )
        for r in results
    ]
    widths = [max(len(row[i]) for row in (TABLE_HEADER, *rows)) for i in range(len(TABLE_HEADER))]

    def line(cells: tuple[str, ...]) -> str:
        first = cells[0].ljust(widths[0])
        rest = [cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True)]
        return "  ".join([first, *rest])

    rule = "  ".join("-" * width for width in widths)
    body: list[str] = []
    for i, row in enumerate(rows):
        if i and results[i].algorithm != results[i - 1].algorithm:
            body.append("")
        body.append(line(row))
    return "\n".join([line(TABLE_HEADER), rule, *body])


COLORS = {"keras": "#2ca02c", "kerasopt": "#d62728", "torch": "#7f7f7f"}
STYLES = {"keras": "-", "kerasopt": "--", "torch": ":"}


def write_plot(results: list[RunResult], path: Path, title: str) -> Path:
    """Per algorithm: the training loss per epoch, and each run's distance from the Keras
    run after every batch (log scales); writes a PNG atomically."""
    # The Agg canvas is attached to this figure only: no pyplot, no global backend switch.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    algorithms = list(dict.fromkeys(r.algorithm for r in results))
    figure = Figure(figsize=(12, 4.2 * len(algorithms)), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(algorithms), 2, squeeze=False)
    for row, algorithm in zip(axes, algorithms, strict=True):
        runs = [r for r in results if r.algorithm == algorithm]
        label = "Adam (amsgrad)" if algorithm == "adam" else "Adamax"
        loss_ax, gap_ax = row
        for r in runs:
            implementation = r.name.partition("-")[0]
            loss_ax.plot(range(len(r.train_loss)), r.train_loss, STYLES[implementation],
                         color=COLORS[implementation], linewidth=1.8, label=r.name)
        loss_ax.set_yscale("log")
        loss_ax.set_title(f"{label}: training loss (live weights)")
        loss_ax.set_xlabel("epoch")
        loss_ax.xaxis.get_major_locator().set_params(integer=True)
        loss_ax.set_ylabel("cross-entropy, full training set")
        loss_ax.grid(True, alpha=0.3)
        loss_ax.legend()
        compared = [r for r in runs if r.divergence is not None]
        gap_ax.set_title(f"{label}: largest |w - w_Keras| after each batch")
        gap_ax.set_xlabel("batch")
        gap_ax.grid(True, alpha=0.3)
        if not compared:
            gap_ax.text(0.5, 0.5, "no keras run: nothing to compare with",
                        ha="center", va="center", transform=gap_ax.transAxes)
            continue
        for r in compared:
            implementation = r.name.partition("-")[0]
            exact = bool(np.all(r.divergence == 0))
            gap_ax.plot(np.arange(1, len(r.divergence) + 1),
                        np.maximum(r.divergence, EXACT_FLOOR), STYLES[implementation],
                        color=COLORS[implementation], linewidth=1.2,
                        label=r.name + (" (identical)" if exact else ""))
        gap_ax.set_yscale("log")
        gap_ax.set_ylabel(f"max abs difference (log; 0 drawn at {EXACT_FLOOR:g})")
        gap_ax.legend()
    figure.suptitle(title)

    path.parent.mkdir(parents=True, exist_ok=True)
    # Write next to the target, then rename: a reader never sees a half-written file.
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as handle:
            figure.savefig(handle, format="png", dpi=100)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


# ------------------------------------------------------------------------ main


REQUIRED = (("torch", "torch"), ("tqdm", "tqdm"), ("matplotlib", "matplotlib"))


def _missing_dependencies() -> list[str]:
    return [package for module, package in REQUIRED if importlib.util.find_spec(module) is None]


def run(args: argparse.Namespace) -> int:
    """``kerasopt demo``: returns the exit status."""
    started = time.perf_counter()
    missing = _missing_dependencies()
    if missing:
        from kerasopt._install import install_hint

        print(
            f"kerasopt demo needs {', '.join(missing)}, which "
            f"{'is' if len(missing) == 1 else 'are'} not installed. "
            + install_hint("demo", packages=missing),
            file=sys.stderr,
        )
        return 1
    problem = check_output_directory(args.output)
    if problem:
        print(f"kerasopt demo: --output {args.output}: {problem}; choose another directory.",
              file=sys.stderr)
        return 2
    results = run_demo(
        optimizers=args.optimizers,
        epochs=args.epochs,
        learning_rate=args.learning_rate,
        batch_size=args.batch_size,
        seed=args.seed,
        output=args.output,
        train_samples=args.train_samples,
        progress=not args.no_progress,
        threads=args.threads,
        started=started,
    )
    return 0 if results and all(math.isfinite(r.final_loss) for r in results) else 1


def run_demo(
    optimizers: Sequence[str] = OPTIMIZERS,
    epochs: int = DEFAULT_EPOCHS,
    learning_rate: float = DEFAULT_LEARNING_RATE,
    batch_size: int = DEFAULT_BATCH_SIZE,
    seed: int = DEFAULT_SEED,
    output: Path | str = DEFAULT_OUTPUT,
    train_samples: int | None = None,
    progress: bool = True,
    threads: int | None = 1,
    keras_status: KerasStatus | None = None,
    started: float | None = None,
) -> list[RunResult]:
    """Train once per run, print the table and the plot's path; return the results.

    ``threads``: torch's CPU threads during the demo (restored afterwards); None keeps the
    current setting. ``keras_status``: how to get Keras (default :func:`import_keras`).
    ``started``: the ``perf_counter`` time the command began (for the total wall time).
    """
    started = time.perf_counter() if started is None else started
    import torch

    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _run_demo(list(optimizers), epochs, Recipe(learning_rate=learning_rate),
                         batch_size, seed, Path(output), train_samples, progress,
                         keras_status, started)
    finally:
        torch.set_num_threads(previous_threads)


def _run_demo(
    optimizers: list[str],
    epochs: int,
    recipe: Recipe,
    batch_size: int,
    seed: int,
    output: Path,
    train_samples: int | None,
    progress: bool,
    keras_status: KerasStatus | None,
    started: float,
) -> list[RunResult]:
    import torch

    from kerasopt import kernels

    notes: list[str] = []
    keras = None
    if any(name.startswith("keras-") for name in optimizers):
        keras_status = keras_status or import_keras()
        keras = keras_status.module
        notes.append(keras_status.message)
        if keras is None:
            skipped = [name for name in optimizers if name.startswith("keras-")]
            optimizers = [name for name in optimizers if name not in skipped]
            notes.append(f"Skipped: {', '.join(skipped)}; the distance from Keras is not shown.")

    images, labels = load_digits()
    x_train, y_train, x_test, y_test = split_digits(images, labels)
    if train_samples is not None:
        x_train, y_train = x_train[:train_samples], y_train[:train_samples]
    data = tuple(torch.from_numpy(a) for a in (x_train, y_train, x_test, y_test))
    initial_state = {k: v.clone() for k, v in build_model(seed).state_dict().items()}
    batches = make_batches(len(x_train), epochs, batch_size, seed)
    micro_steps = sum(len(epoch) for epoch in batches)
    n = recipe.gradient_accumulation_steps
    threads = torch.get_num_threads()
    print(
        f"kerasopt demo: 8x8 handwritten digits ({len(x_train)} training, {len(x_test)} test "
        f"images), MLP 64-{HIDDEN_UNITS}-10, {epochs} epoch{'s' if epochs != 1 else ''} x "
        f"{len(batches[0])} batches of {batch_size} = {micro_steps} batches "
        f"({micro_steps // n} updates) per run, seed {seed};\n"
        f"optimizer arguments: {recipe.describe(micro_steps)};\n"
        f"torch {torch.__version__} on CPU ({threads} thread{'s' if threads != 1 else ''}); "
        + ("kerasopt steps with its fused kernels (numba)." if kernels.available() else
           "numba is missing: kerasopt steps with its slower reference path."),
        flush=True,
    )
    for note in notes:
        print(note, flush=True)
    if not optimizers:
        print("Nothing to run.")
        return []

    if progress:
        print("Warming up every run kind (the first run ever compiles kerasopt's kernels; "
              "numba caches them)...", file=sys.stderr, flush=True)
    warm_start = time.perf_counter()
    _warm_up(list(dict.fromkeys(name for name in optimizers)), recipe, initial_state, data,
             seed, keras)
    warm_seconds = time.perf_counter() - warm_start

    results: list[RunResult] = []
    references: dict[str, Reference] = {}
    for name in _ordered(optimizers):
        algorithm = name.partition("-")[2]
        is_keras = name.startswith("keras-")
        run = make_run(name, recipe, initial_state, micro_steps, seed, keras)
        result, reference = train_one(name, run, batches, data, references.get(algorithm),
                                      progress, keep_trajectory=is_keras)
        if reference is not None:
            references[algorithm] = reference
        results.append(result)
    results.sort(key=lambda r: optimizers.index(r.name))

    print()
    print(format_table(results))
    print()
    print(_explanation(results))
    title = (f"kerasopt demo: 8x8 digits, MLP 64-{HIDDEN_UNITS}-10, batch {batch_size}, "
             f"{micro_steps} batches, seed {seed}; Keras's features on")
    path = write_plot(results, output / PLOT_NAME, title)
    print(f"Plot of the loss curves and the distance from Keras: {path.resolve()}")
    total = time.perf_counter() - started
    print(f"Total wall time {total:.1f} s (warm-up, including any kernel compilation: "
          f"{warm_seconds:.1f} s; runs: {sum(r.seconds for r in results):.1f} s).")
    return results


def _ordered(optimizers: list[str]) -> list[str]:
    """Algorithm by algorithm (in the order given), the keras run first: the others are
    compared with it."""
    algorithms = list(dict.fromkeys(name.partition("-")[2] for name in optimizers))
    return sorted(optimizers, key=lambda name: (algorithms.index(name.partition("-")[2]),
                                                not name.startswith("keras-")))


def _explanation(results: list[RunResult]) -> str:
    lines = [
        "final loss / test accuracy: with the EMA weights copied in at the end (as Keras's "
        "fit does);",
        "max |w - Keras|: the largest difference of any weight from the keras run of the "
        "same algorithm, after the run;",
        "optimizer us/batch: the optimizer's share of a batch (Keras: apply(); kerasopt: "
        "step(); torch.optim: clipping, step(),",
        "  the scheduler and the EMA update, every second batch); wall time: the run's "
        "batches and per-epoch evaluations.",
    ]
    compared = [r for r in results if r.final_difference is not None]
    if compared:
        lines += [
            "kerasopt reproduces Keras to float32 rounding: what remains comes from the two "
            "models' forward and backward",
            "passes (torch's Linear and Keras's Dense round their matrix products "
            "differently, ~1e-8 per step). torch.optim",
            "cannot follow: epsilon inside the max (Adamax) or after the bias correction "
            "(Adam), an L2 term instead of",
            "decoupled decay (Adamax), its scheduler and EMA counting updates where Keras "
            "counts batches, clip_grad_norm_'s +1e-6.",
        ]
    return "\n".join(lines)
