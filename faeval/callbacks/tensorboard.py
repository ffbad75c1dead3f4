"""What faeval puts in TensorBoard besides the scalars: the chart layout and the HParams row.

The layout ("Custom Scalars" tab) is built on the log10 companions of the norms and growth
(``faeval.runlog.epoch_scalars``), because a custom-scalar chart has no log-scale switch: on
a linear axis ‖g_L‖ ≈ 1e-6 is a flat line at 0 beside ‖h_L‖ ≈ 1e3. ‖h‖ and ‖g‖ get separate
charts; the floor of diagnostic (b) and the growth threshold of (a) are drawn as reference
series; the credit's distance from backprop and its scale are charted on log10 too; the
protocol's figures (ρ, the null band) and the layer-wise methods' W–B figures have charts of
their own. Every series is logged at x = epoch, so runs of any batch size line up.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.tensorboard.summary import hparams

#: The categories that only some runs can fill: the protocol's (with the Protocol callback or
#: ``faeval audit``) and the feedback weights' (layer-wise methods).
PROTOCOL_CATEGORY = "faeval: protocol (with --trainer.callbacks+=Protocol)"
FEEDBACK_CATEGORY = "faeval: feedback weights (layer-wise methods: LayerFA, USF, BRSF, FRSF, KP)"


#: The custom-scalar layout: category -> chart title -> [kind, tags]. "Margin" charts draw one
#: line per run (tags: value, lower, upper) with a band between lower and upper; TensorBoard
#: does not smooth them, so a run of a few epochs is drawn as it is. "Multiline" charts take
#: tag regexes (TensorBoard smooths those by default: 0.6).
LAYOUT: dict[str, dict[str, list]] = {
    "faeval: the collapse at a glance (log10, x = epoch)": {
        "log10 ‖h_L‖ (band: ‖h_l‖ of every layer)": [
            "Margin",
            ["log10/h_L", "log10/h_min", "log10/h_max"],
        ],
        "log10 ‖g_L‖ (band: down to the floor of (b), 1e-7)": [
            "Margin",
            ["log10/g_L", "ref/log10_grad_floor", "log10/g_L"],
        ],
        "log10 max growth of ‖h_l‖ (band: to the threshold of (a), ×50)": [
            "Margin",
            ["log10/growth", "ref/log10_growth_threshold", "log10/growth"],
        ],
        "test accuracy": ["Margin", ["test/acc", "test/acc", "test/acc"]],
    },
    "faeval: per layer (l = 0 is the embedding)": {
        "log10 ‖h_l‖": ["Multiline", [r"^log10/h_norm/l\d+$"]],
        "log10 ‖g_l‖ and the floor": [
            "Multiline",
            [r"^log10/g_norm/l\d+$", r"^ref/log10_grad_floor$"],
        ],
        "cos(a_l, g_l) (missing while (b) fires)": ["Multiline", [r"^diag/cos/l\d+$"]],
        "log10 ‖h_l‖/‖h_{l-1}‖": ["Multiline", [r"^log10/h_ratio/l\d+$"]],
        "log10 distance from backprop ‖a_l − c_l·g_l‖ / ‖c_l·g_l‖ (the note: ≤ 1e-4)": [
            "Multiline",
            [r"^log10/credit_error/l\d+$"],
        ],
        "log10 c_l, the credit's scale against backprop's (missing where c_l ≤ 0)": [
            "Multiline",
            [r"^log10/credit_scale/l\d+$"],
        ],
    },
    PROTOCOL_CATEGORY: {
        "deep cos (band: the null band, mean ± 2σ of fresh feedback)": [
            "Margin",
            ["protocol/cos_deep", "protocol/null_deep_lower", "protocol/null_deep_upper"],
        ],
        "ρ deep (band: random credit's ρ to the true gradient's)": [
            "Margin",
            ["protocol/rho_deep", "protocol/rho_negative_deep", "protocol/rho_positive_deep"],
        ],
        "ρ per layer": ["Multiline", [r"^protocol/rho/l\d+$"]],
        "direction stability (c): credit and true gradient": [
            "Multiline",
            [r"^protocol/stability$", r"^protocol/stability_gradient$"],
        ],
    },
    FEEDBACK_CATEGORY: {
        "angle(W, B) per layer, degrees": ["Multiline", [r"^diag/feedback_angle/"]],
        "log10 ‖B‖/‖W‖ per layer": ["Multiline", [r"^log10/feedback_norm_ratio/"]],
    },
}

#: The metrics of the HParams table (their last value per run).
HPARAM_METRICS = ("test/acc", "diag/growth", "diag/g_L", "log10/g_L")


def write_layout(logger: TensorBoardLogger, protocol: bool = True, feedback: bool = True) -> None:
    """Writes the custom-scalar layout into the run's events.

    Args:
        logger: the run's logger.
        protocol: lay out the protocol's charts (the run logs them: Protocol callback).
        feedback: lay out the feedback weights' charts (a layer-wise feedback method).

    TensorBoard merges the layouts of every run it shows, so a chart that no run can fill
    is never drawn empty when each run leaves out what it does not log.
    """
    left_out = {PROTOCOL_CATEGORY: not protocol, FEEDBACK_CATEGORY: not feedback}
    layout = {c: charts for c, charts in LAYOUT.items() if not left_out.get(c, False)}
    write_layout_dict(logger.experiment, layout)


def write_layout_dict(writer, layout: dict[str, dict[str, list]]) -> None:
    """Writes a custom-scalar ``layout`` (as ``LAYOUT``) with a ``SummaryWriter``.

    TensorBoard (2.21) draws a category's margin charts after its multiline charts and in
    reverse order; they are written reversed so that they appear in the layout's order.
    """
    ordered = {}
    for category, charts in layout.items():
        margins = [(t, c) for t, c in charts.items() if c[0] == "Margin"]
        lines = [(t, c) for t, c in charts.items() if c[0] != "Margin"]
        ordered[category] = dict(lines + margins[::-1])
    writer.add_custom_scalars(ordered)


def write_hparams(logger: TensorBoardLogger, params: dict[str, Any]) -> None:
    """Writes the run's HParams row: ``params`` against ``HPARAM_METRICS``.

    Unlike ``TensorBoardLogger.log_hyperparams`` it logs no placeholder value under the
    metric names (Lightning's ``hp_metric`` −1): the table reads the metrics the run logs.
    """
    session = hparams(params, dict.fromkeys(HPARAM_METRICS, 0.0))
    writer = logger.experiment._get_file_writer()
    for summary in session:
        writer.add_summary(summary)


def flat_hparams(value: Any, prefix: str = "") -> dict[str, Any]:
    """Init arguments as flat, TensorBoard-ready key/value pairs.

    A class given as ``{"class_path": ..., "init_args": {...}}`` (as LightningCLI stores it)
    or as a ``functools.partial`` becomes its class name under ``prefix`` and its arguments
    under ``prefix.name``; anything that is not a number, a bool or a string is written as
    text.
    """
    out: dict[str, Any] = {}
    if isinstance(value, dict) and "class_path" in value:
        out[prefix] = str(value["class_path"]).rsplit(".", 1)[-1]
        out.update(flat_hparams(value.get("init_args") or {}, prefix))
    elif isinstance(value, dict):
        for key, item in value.items():
            out.update(flat_hparams(item, f"{prefix}.{key}" if prefix else str(key)))
    elif hasattr(value, "func") and hasattr(value, "keywords"):  # functools.partial
        out[prefix] = getattr(value.func, "__name__", str(value.func))
        out.update(flat_hparams(dict(value.keywords), prefix))
    elif isinstance(value, type):
        out[prefix] = value.__name__
    elif value is None or isinstance(value, (bool, int, float, str)):
        out[prefix] = "None" if value is None else value
    else:
        out[prefix] = str(value)
    return out
