"""The report's figures, in the order the HTML shows them: (key, title, note, function). Each
function takes the loaded experiment and the output folder and returns the PNG's file name, or
None when the runs hold nothing to draw (e.g. diagnostics the engine did not record)."""
from __future__ import annotations

from pathlib import Path
from typing import Dict

from . import diagnostics, params, training
from .common import assign_colours

BAND = ("Lines are group means over seeds; bands their 95% intervals (groups of 2+ completed runs); "
        "on log axes, geometric means.")
FIGURES = [
    ("curves", "Training curves",
     "Train and validation loss, validation accuracy. " + BAND +
     " Dashed: runs that did not complete; a marker on the axis edge at the epoch each stopped.", training.curves),
    ("grid", "Hyperparameter grid",
     "Final validation accuracy per group: mean, ±half-width of its 95% interval, n completed runs. "
     "Hatched: groups without a completed run.", training.grid),
    ("sharing", "Sharing: accuracy vs unique parameters",
     "Triangles: runs with tied layers (unique < total parameters); bars: 95% intervals of group means.",
     training.sharing),
    ("param_evolution", "Parameter evolution",
     "Mean, std and L2 norm of every parameter tensor per epoch; epoch 0 is right after init. Tied tensors are "
     "stored once, under their canonical name. " + BAND, params.param_evolution),
    ("grads", "Gradient evolution",
     "L2 norm of each parameter's mean gradient over the epoch's steps. For tied parameters, each call site's "
     "share of the gradient (they add up to the total).", params.grads),
    ("update_ratio", "Update-to-weight ratio",
     "Norm of each tensor's change since the previous snapshot over its norm then, per optimizer step (divided "
     "by the steps in between: a lower bound when steps do not all point one way); log scale; dotted: 1e-3, the "
     "usual scale of a healthy SGD step.",
     diagnostics.update_ratio),
    ("site_cosine", "Call sites of tied tensors",
     "Cosine between each call site's mean gradient and the tied tensor's gradient: 1 = the sites agree, "
     "0 or below = they pull apart.", diagnostics.site_cosine),
    ("noise_scale", "Gradient noise scale",
     "B_simple = batch size x mean squared deviation of the step gradients / squared norm of the mean gradient "
     "(McCandlish et al. 2018), per layer and for all parameters; dotted: the batch size. The epoch's steps see "
     "weights that move, so the mean gradient shrinks as gradients turn and B_simple reads high, the more so "
     "late in training: compare layers and runs, not absolute values.", diagnostics.noise_scale),
    ("histograms", "Weight distributions",
     "Stored 64-bin histograms at init and at the last epoch, for a few runs.", params.histograms),
    ("activations", "Activations", "Per hidden layer, on a fixed batch of held-out images. " + BAND,
     params.activations),
]


def draw_all(exp, out: Path) -> Dict[str, str]:
    """Every figure that has something to show: key -> PNG file name."""
    assign_colours(exp)
    drawn = {}
    for key, _, _, fn in FIGURES:
        name = fn(exp, out)
        if name:
            drawn[key] = name
    return drawn
