"""``kerasopt demo``: train a small real model with kerasopt's and torch.optim's Adamax and Adam.

The data set is the 8x8 handwritten digits (1797 images, 10 classes) that ships inside
the package (``kerasopt/data/digits.csv.gz``; origin and licence in
``kerasopt/data/LICENSE-digits.txt``), so nothing is downloaded. Every run starts from
the same initial weights and sees the same mini-batches in the same order; only the
optimizer differs. Each optimizer uses its own library's defaults apart from the
learning rate (Keras: ``epsilon=1e-7``, epsilon-hat in Adam, epsilon outside the max in
Adamax; torch.optim: ``eps=1e-8``, inside the max in Adamax), which is why the curves
are close but not identical.

Needs PyTorch, tqdm and matplotlib: ``pip install "kerasopt[demo]"``.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

OPTIMIZERS = ("kerasopt-adamax", "kerasopt-adam", "torch-adamax", "torch-adam")
DEFAULT_EPOCHS = 20
DEFAULT_LEARNING_RATE = 0.005
DEFAULT_BATCH_SIZE = 32
DEFAULT_SEED = 0
DEFAULT_OUTPUT = "kerasopt-demo-output"
PLOT_NAME = "loss_curves.png"
TEST_FRACTION = 0.2
SPLIT_SEED = 20240601  # the train/test split is fixed, whatever --seed is
HIDDEN_UNITS = 64

DESCRIPTION = """\
Train a small neural network (an MLP, 64-64-10) on the 8x8 handwritten digits data set
that ships with kerasopt (1797 images, a fixed 80/20 train/test split; no download),
once per optimizer: kerasopt's Adamax and Adam, and torch.optim's Adamax and Adam for
comparison. Every run starts from the same initial weights and sees the same
mini-batches, so only the optimizer differs. Shows a progress bar per run, then prints a
table (final training loss, test accuracy, wall time) and writes a PNG plot of the loss
curves, whose path it prints. Runs on the CPU; the defaults take well under a minute.

Apart from the learning rate, each optimizer keeps its library's defaults: Keras's
epsilon=1e-7 (in Adam added to the uncorrected sqrt(v), "epsilon hat"; in Adamax added
outside the max) versus torch.optim's eps=1e-8 (added to the bias-corrected sqrt(v) in
Adam, inside the max in Adamax).

Needs PyTorch, tqdm and matplotlib: pip install "kerasopt[demo]".
"""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``demo`` subcommand to the ``kerasopt`` command line."""
    parser = subparsers.add_parser(
        "demo",
        help="train a small model on a bundled data set with kerasopt's and torch's "
        "Adamax and Adam; print a comparison table and write a plot",
        description=DESCRIPTION,
        formatter_class=_HelpFormatter,
    )
    parser.add_argument(
        "--epochs",
        type=_positive_int,
        default=DEFAULT_EPOCHS,
        metavar="N",
        help=f"passes over the training set per run (default: {DEFAULT_EPOCHS})",
    )
    parser.add_argument(
        "--optimizers",
        type=_optimizer_list,
        default=list(OPTIMIZERS),
        metavar="LIST",
        help="comma-separated optimizers to run, from: "
        f"{', '.join(OPTIMIZERS)} (default: all four)",
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
        help=f"learning rate, the same for every optimizer (default: {DEFAULT_LEARNING_RATE}; "
        "Keras's own default is 0.001)",
    )
    parser.add_argument(
        "--batch-size",
        type=_positive_int,
        default=DEFAULT_BATCH_SIZE,
        metavar="N",
        help=f"mini-batch size (default: {DEFAULT_BATCH_SIZE})",
    )
    parser.add_argument(
        "--train-samples",
        type=_positive_int,
        default=None,
        metavar="N",
        help="train on only the first N training images (default: all of them); for a quicker run",
    )
    parser.add_argument(
        "--threads",
        type=_positive_int,
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


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {value}")
    return value


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


# ------------------------------------------------------------------ optimizers


def make_optimizer(name: str, model: Any, lr: float) -> Any:
    """The optimizer ``name`` (one of :data:`OPTIMIZERS`) over ``model``'s parameters.

    Everything but the learning rate keeps its library's default. Returns an object with
    ``zero_grad()`` and ``step()``.
    """
    import torch

    if name == "torch-adam":
        return torch.optim.Adam(model.parameters(), lr=lr)
    if name == "torch-adamax":
        return torch.optim.Adamax(model.parameters(), lr=lr)
    if name not in ("kerasopt-adam", "kerasopt-adamax"):
        raise ValueError(f"Unknown optimizer {name!r}; expected one of {', '.join(OPTIMIZERS)}.")
    import kerasopt.torch

    algorithm = "Adam" if name == "kerasopt-adam" else "Adamax"
    return getattr(kerasopt.torch, algorithm)(model.parameters(), learning_rate=lr)


# ------------------------------------------------------------------- training


@dataclass
class RunResult:
    """One optimizer's run. ``train_loss[e]`` / ``test_accuracy[e]``: after epoch ``e``
    (index 0: the initial weights)."""

    name: str
    train_loss: list[float] = field(default_factory=list)
    test_loss: list[float] = field(default_factory=list)
    test_accuracy: list[float] = field(default_factory=list)
    seconds: float = 0.0


def build_model(seed: int) -> Any:
    import torch
    from torch import nn

    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(64, HIDDEN_UNITS),
        nn.ReLU(),
        nn.Linear(HIDDEN_UNITS, 10),
    )


def _evaluate(model: Any, images: Any, labels: Any) -> tuple[float, float]:
    import torch
    from torch.nn import functional as F

    with torch.no_grad():
        logits = model(images)
        loss = F.cross_entropy(logits, labels).item()
        accuracy = (logits.argmax(dim=1) == labels).float().mean().item()
    return loss, accuracy


def train_one(
    name: str,
    initial_state: dict[str, Any],
    batches: list[list[Any]],
    data: tuple[Any, Any, Any, Any],
    lr: float,
    seed: int,
    progress: bool,
) -> RunResult:
    """Train a fresh model from ``initial_state`` with optimizer ``name`` on ``batches``
    (one list of index tensors per epoch)."""
    import torch
    from torch.nn import functional as F
    from tqdm import tqdm

    x_train, y_train, x_test, y_test = data
    model = build_model(seed)
    model.load_state_dict(initial_state)
    optimizer = make_optimizer(name, model, lr)
    result = RunResult(name)

    def record() -> None:
        result.train_loss.append(_evaluate(model, x_train, y_train)[0])
        test_loss, test_accuracy = _evaluate(model, x_test, y_test)
        result.test_loss.append(test_loss)
        result.test_accuracy.append(test_accuracy)

    record()
    steps = sum(len(epoch) for epoch in batches)
    bar = tqdm(
        total=steps,
        desc=f"{name:<15}",
        unit="step",
        disable=not progress,
        leave=True,
        dynamic_ncols=True,
        file=sys.stderr,
    )
    start = time.perf_counter()
    try:
        for epoch, epoch_batches in enumerate(batches, start=1):
            for index in epoch_batches:
                optimizer.zero_grad()
                loss = F.cross_entropy(model(x_train[index]), y_train[index])
                loss.backward()
                optimizer.step()
                bar.update(1)
            record()
            bar.set_postfix(
                epoch=f"{epoch}/{len(batches)}",
                loss=f"{result.train_loss[-1]:.4f}",
                test_acc=f"{result.test_accuracy[-1]:.1%}",
                refresh=False,
            )
    finally:
        bar.close()
    # Wall time includes the per-epoch evaluation, which is the same for every run.
    result.seconds = time.perf_counter() - start
    if not torch.isfinite(torch.tensor(result.train_loss[-1])):
        print(f"warning: {name}: the training loss is not finite; try a lower --learning-rate.")
    return result


def _warm_up(data: tuple[Any, Any, Any, Any], seed: int, optimizers: Sequence[str]) -> None:
    """A few untimed steps of every optimizer on a throwaway model, so the first timed run
    does not pay for one-off start-up costs: torch's (thread pool, allocator, kernel
    selection) and kerasopt's (loading its compiled kernels from numba's cache, or
    compiling them on the very first run)."""
    from torch.nn import functional as F

    x_train, y_train = data[0], data[1]
    for name in optimizers:
        model = build_model(seed)
        optimizer = make_optimizer(name, model, 1e-3)
        for _ in range(3):
            optimizer.zero_grad()
            F.cross_entropy(
                model(x_train[:DEFAULT_BATCH_SIZE]), y_train[:DEFAULT_BATCH_SIZE]
            ).backward()
            optimizer.step()
            _evaluate(model, x_train, y_train)


def make_batches(n_train: int, epochs: int, batch_size: int, seed: int) -> list[list[Any]]:
    """The mini-batch indices of every epoch (shuffled with ``seed``), shared by all runs."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(epochs):
        order = torch.randperm(n_train, generator=generator)
        batches.append(list(order.split(batch_size)))
    return batches


# ---------------------------------------------------------------------- output


def format_table(results: list[RunResult]) -> str:
    """The comparison table: optimizer, final train loss, test accuracy, wall time."""
    header = ("optimizer", "final train loss", "test accuracy", "wall time")
    rows = [
        (
            r.name,
            f"{r.train_loss[-1]:.4f}",
            f"{r.test_accuracy[-1]:.2%}",
            f"{r.seconds:.2f} s",
        )
        for r in results
    ]
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]

    def line(cells: tuple[str, ...]) -> str:
        first = cells[0].ljust(widths[0])
        rest = [cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True)]
        return "  ".join([first, *rest])

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([line(header), rule, *(line(row) for row in rows)])


COLORS = {
    "kerasopt-adamax": "#d62728",
    "kerasopt-adam": "#1f77b4",
    "torch-adamax": "#ff9896",
    "torch-adam": "#aec7e8",
}
STYLES = {"kerasopt-adamax": "-", "kerasopt-adam": "-", "torch-adamax": "--", "torch-adam": "--"}


def write_plot(results: list[RunResult], path: Path, title: str) -> Path:
    """Plot the training and test loss curves and the test accuracy; write a PNG atomically."""
    # The Agg canvas is attached to this figure only: no pyplot, no global backend switch.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import PercentFormatter

    figure = Figure(figsize=(12, 4.4), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, 3)
    panels = (
        ("training loss (full training set)", "train_loss", True),
        ("test loss", "test_loss", True),
        ("test accuracy", "test_accuracy", False),
    )
    for ax, (panel_title, attribute, log_scale) in zip(axes, panels, strict=True):
        for r in results:
            values = getattr(r, attribute)
            ax.plot(
                range(len(values)),
                values,
                STYLES.get(r.name, "-"),
                color=COLORS.get(r.name),
                linewidth=2.0 if r.name.startswith("kerasopt") else 1.6,
                label=r.name,
            )
        ax.set_title(panel_title)
        ax.set_xlabel("epoch")
        ax.grid(True, alpha=0.3)
        if log_scale:
            ax.set_yscale("log")
            ax.set_ylabel("cross-entropy")
        else:
            ax.set_ylim(max(0.0, min(min(r.test_accuracy[1:] or [0.0]) for r in results) - 0.05), 1)
            ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    axes[0].legend()
    figure.suptitle(title)

    path.parent.mkdir(parents=True, exist_ok=True)
    # Write next to the target, then rename: a reader never sees a half-written file.
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as handle:
            figure.savefig(handle, format="png", dpi=110)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


# ------------------------------------------------------------------------ main


def _missing_dependencies() -> list[str]:
    return [
        package
        for module, package in (("torch", "torch"), ("tqdm", "tqdm"), ("matplotlib", "matplotlib"))
        if importlib.util.find_spec(module) is None
    ]


def run(args: argparse.Namespace) -> int:
    """``kerasopt demo``: returns the exit status."""
    missing = _missing_dependencies()
    if missing:
        print(
            f"kerasopt demo needs {', '.join(missing)}, which "
            f"{'is' if len(missing) == 1 else 'are'} not installed. "
            'Install them with: pip install "kerasopt[demo]"',
            file=sys.stderr,
        )
        return 1
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
    )
    return 0 if all(math.isfinite(r.train_loss[-1]) for r in results) else 1


def run_demo(
    optimizers: list[str] | tuple[str, ...] = OPTIMIZERS,
    epochs: int = DEFAULT_EPOCHS,
    learning_rate: float = DEFAULT_LEARNING_RATE,
    batch_size: int = DEFAULT_BATCH_SIZE,
    seed: int = DEFAULT_SEED,
    output: Path | str = DEFAULT_OUTPUT,
    train_samples: int | None = None,
    progress: bool = True,
    threads: int | None = 1,
) -> list[RunResult]:
    """Train once per optimizer, print the table and the plot's path; return the results.

    ``threads``: torch's CPU threads during the demo (restored afterwards); None keeps the
    current setting.
    """
    import torch

    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _run_demo(
            optimizers, epochs, learning_rate, batch_size, seed, output, train_samples, progress
        )
    finally:
        torch.set_num_threads(previous_threads)


def _run_demo(
    optimizers: list[str] | tuple[str, ...],
    epochs: int,
    learning_rate: float,
    batch_size: int,
    seed: int,
    output: Path | str,
    train_samples: int | None,
    progress: bool,
) -> list[RunResult]:
    import torch

    from kerasopt import kernels

    images, labels = load_digits()
    x_train, y_train, x_test, y_test = split_digits(images, labels)
    if train_samples is not None:
        x_train, y_train = x_train[:train_samples], y_train[:train_samples]
    data = (
        torch.from_numpy(x_train),
        torch.from_numpy(y_train),
        torch.from_numpy(x_test),
        torch.from_numpy(y_test),
    )
    initial_state = {k: v.clone() for k, v in build_model(seed).state_dict().items()}
    batches = make_batches(len(x_train), epochs, batch_size, seed)
    steps = sum(len(epoch) for epoch in batches)

    print(
        f"kerasopt demo: 8x8 handwritten digits ({len(x_train)} training, {len(x_test)} test "
        f"images), MLP 64-{HIDDEN_UNITS}-10;\n{epochs} epoch{'s' if epochs != 1 else ''} "
        f"x {len(batches[0])} steps of batch {batch_size} = {steps} steps per run, "
        f"learning rate {learning_rate:g}, seed {seed};\ntorch {torch.__version__} on CPU "
        f"({torch.get_num_threads()} thread{'s' if torch.get_num_threads() != 1 else ''}); "
        + ("kerasopt steps with its fused kernels (numba)" if kernels.available() else
           "numba is missing: kerasopt steps with its reference path"),
        flush=True,
    )
    _warm_up(data, seed, optimizers)
    results = [
        train_one(name, initial_state, batches, data, learning_rate, seed, progress)
        for name in optimizers
    ]
    print()
    print(format_table(results))
    print()
    print(
        "Same initial weights and batches for every run; each optimizer keeps its library's "
        "defaults\nbesides the learning rate (kerasopt = Keras: epsilon=1e-7; torch.optim: "
        "eps=1e-8)."
    )
    title = (
        f"kerasopt demo — 8x8 digits, MLP 64-{HIDDEN_UNITS}-10, lr={learning_rate:g}, "
        f"batch {batch_size}, seed {seed}"
    )
    path = write_plot(results, Path(output) / PLOT_NAME, title)
    print(f"Plot of the loss curves: {path.resolve()}")
    return results
