"""What a run measures beyond its loss: the pausable training clock and the brain-likeness of the weights."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from benchmark.atomic import temporary_beside


class Clock:
    """Wall time spent training, with evaluation paused out of it (AlgoPerf's training clock)."""

    def __init__(self) -> None:
        self._elapsed = 0.0
        self._started: float | None = None

    def start(self) -> None:
        if self._started is None:
            self._started = time.perf_counter()

    def pause(self) -> None:
        if self._started is not None:
            self._elapsed += time.perf_counter() - self._started
            self._started = None

    @property
    def seconds(self) -> float:
        running = time.perf_counter() - self._started if self._started is not None else 0.0
        return self._elapsed + running


# ---------------------------------------------------------------------------------------------
# Brain-likeness of the learned weights: sign preservation (Dale's law) and log-normal magnitudes, as
# in Cornford, Pogodin et al., bioRxiv 10.1101/2024.10.25.620272, whose KS test of log|w| is in
# github.com/jhcornford/exponentiated-gradients ``eg_reach_oc/analysis/reach_weight_dists.ipynb``.
# Computed at the end of every run, for every rule, and stored as ``final`` columns.

KS_MAX_SAMPLES = 200_000
"""Weights per layer that enter a KS test; larger layers are subsampled with a fixed seed."""

KS_MIN_WEIGHTS = 10
"""Layers with fewer nonzero weights than this are left out of the KS averages."""


def parameter_snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of every parameter, by name: the reference for :func:`sign_flip_fraction`."""
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def sign_flip_fraction(initial: Mapping[str, torch.Tensor], model: torch.nn.Module) -> float:
    """The fraction of parameter entries whose sign is opposite to their sign in ``initial``.

    Dale's law counts a synapse that went from excitatory to inhibitory or back: ``w₀·w < 0``.
    An entry that is or becomes exactly 0 (a pruned synapse) has changed no sign. Every
    parameter counts (split biases included); names missing from ``initial`` are skipped.
    """
    flipped = 0
    total = 0
    for name, param in model.named_parameters():
        start = initial.get(name)
        if start is None or start.shape != param.shape:
            continue
        flipped += int((start.to(param.device) * param.detach() < 0).sum())
        total += param.numel()
    return flipped / total if total else math.nan


def _ks_to_normal(values: np.ndarray) -> float:
    """The Kolmogorov–Smirnov statistic of the standardised values against N(0, 1):
    ``D = max_i max(i/n − Φ(z_(i)), Φ(z_(i)) − (i−1)/n)`` over the sorted values, the statistic
    ``scipy.stats.kstest(z, "norm")`` returns (tested to equal it). Written out because only the
    statistic is used: kstest's per-call overhead was 1.8 ms against 0.26 ms on 10,000 values,
    six times at the end of every run, and its exact p-value takes tens of seconds on a
    ResNet-sized layer."""
    from scipy.special import ndtr  # imported here: scipy is slow to import and only needed at the end

    z = np.sort((values - values.mean()) / values.std())
    cdf = ndtr(z)
    n = len(z)
    above = np.arange(1, n + 1) / n - cdf
    below = cdf - np.arange(n) / n
    return float(max(above.max(), below.max()))


def layer_weights(model: torch.nn.Module) -> dict[str, np.ndarray]:
    """The weight matrices and kernels (parameters of two or more dimensions) as float64 arrays.

    Biases and normalisation scales (one dimension) are left out: the paper's statistics are
    about synaptic weights.
    """
    return {
        name: p.detach().to("cpu", torch.float64).flatten().numpy()
        for name, p in model.named_parameters()
        if p.dim() >= 2
    }


def _subsample(values: np.ndarray, limit: int = KS_MAX_SAMPLES) -> np.ndarray:
    if len(values) <= limit:
        return values
    return np.random.default_rng(0).choice(values, size=limit, replace=False)


def weight_distribution_ks(model: torch.nn.Module) -> dict[str, float]:
    """KS statistics of a log-normal fit to |w| and of a normal fit to w, averaged over layers.

    Per layer: ``weights/lognormal_ks`` is the Kolmogorov–Smirnov distance between log|w| (exact
    zeros left out, as a log-normal has no mass there) and the normal with the sample's mean and
    standard deviation, which equals the distance between |w| and the fitted log-normal. The
    paper tests log|w| z-scored per seed against N(0, 1) the same way. ``weights/normal_ks`` is
    the distance between the signed weights and their fitted normal (the shape GD's weights keep
    from a Gaussian-like init). Lower is a better fit. The parameters are fitted on the same
    sample, so the statistics compare fits; they are not calibrated tests (Lilliefors).
    """
    lognormal: list[float] = []
    normal: list[float] = []
    for values in layer_weights(model).values():
        values = values[np.isfinite(values)]
        nonzero = np.abs(values[values != 0])
        if len(nonzero) < KS_MIN_WEIGHTS:
            continue
        logs = _subsample(np.log(nonzero))
        if logs.std() > 0:
            lognormal.append(_ks_to_normal(logs))
        signed = _subsample(values)
        if signed.std() > 0:
            normal.append(_ks_to_normal(signed))
    return {
        "weights/lognormal_ks": float(np.mean(lognormal)) if lognormal else math.nan,
        "weights/normal_ks": float(np.mean(normal)) if normal else math.nan,
    }


def brain_metrics(initial: Mapping[str, torch.Tensor], model: torch.nn.Module) -> dict[str, float]:
    """The end-of-run brain-likeness metrics: sign flips since init and the two KS fits."""
    return {"weights/sign_flips": sign_flip_fraction(initial, model), **weight_distribution_ks(model)}


def save_weight_histogram(
    model: torch.nn.Module,
    path: str | Path,
    initial: Mapping[str, torch.Tensor] | None = None,
    title: str = "",
    max_layers: int = 6,
) -> Path:
    """Write a PNG of the weight-magnitude distribution of each layer (log10 |w|), one panel per layer.

    Each panel shows the final weights, the initial ones in grey when ``initial`` is given, and
    the normal density fitted to log10 |w| (a log-normal is a straight Gaussian on this axis).
    Uses matplotlib's Agg canvas directly, so no display and no global pyplot state are needed.

    Args:
        model: the trained model.
        path: where to write the PNG; parent folders are created.
        initial: a :func:`parameter_snapshot` taken at initialisation (optional).
        title: the figure's title, e.g. the run's display name.
        max_layers: panels beyond this many layers are left out (the largest layers are kept).

    Returns:
        The path written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from scipy import stats

    layers = layer_weights(model)
    names = sorted(layers, key=lambda n: -len(layers[n]))[:max_layers]
    names.sort(key=list(layers).index)
    figure = Figure(figsize=(3.2 * max(len(names), 1), 2.8), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, max(len(names), 1), squeeze=False)[0]
    for ax, name in zip(axes, names, strict=False):
        final = _log10_magnitudes(layers[name])
        bins = np.linspace(final.min(), final.max(), 60) if len(final) > 1 and np.ptp(final) > 0 else 30
        if initial is not None and name in initial:
            start = _log10_magnitudes(initial[name].detach().to("cpu", torch.float64).flatten().numpy())
            ax.hist(start, bins=60, density=True, color="0.75", label="init")
        ax.hist(final, bins=bins, density=True, histtype="step", color="C0", label="final")
        if len(final) > 1 and final.std() > 0:
            grid = np.linspace(final.min(), final.max(), 200)
            density = stats.norm.pdf(grid, final.mean(), final.std())
            ax.plot(grid, density, "C1--", lw=1, label="log-normal fit")
        ax.set_title(name, fontsize=8)
        ax.set_xlabel("log10 |w|", fontsize=8)
        ax.tick_params(labelsize=7)
    if names:
        axes[0].legend(fontsize=7)
    if title:
        figure.suptitle(title, fontsize=9)
    path = Path(path)
    with temporary_beside(path, ".png") as tmp:
        figure.savefig(tmp, dpi=100)
        os.replace(tmp, path)  # a reader (MLflow) never sees half a file
    return path


def _log10_magnitudes(values: np.ndarray) -> np.ndarray:
    values = np.abs(values[np.isfinite(values)])
    logs: np.ndarray = np.log10(values[values > 0])
    return logs
