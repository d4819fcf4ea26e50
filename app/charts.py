"""The app's plots as plain Vega-Lite specs (``st.vega_lite_chart``): funnel, length histogram, loss curves,
metric deltas with intervals. Written as dicts rather than through Altair, whose schema validation costs
tens of milliseconds per chart on every render."""

from __future__ import annotations

from typing import Any

import polars as pl
import streamlit as st

VERDICT_COLOURS = {"domain": ["better", "worse", "no significant change"], "range": ["#2a9d4b", "#d62728", "#888888"]}


def funnel(stages: pl.DataFrame) -> None:
    """Records passing and rejected at each stage, in pipeline order (stage, n_out, n_rejected)."""
    data = stages.select("position", "stage", passed="n_out", rejected="n_rejected").unpivot(
        index=["position", "stage"], variable_name="outcome", value_name="records")
    st.vega_lite_chart(data.to_pandas(), {
        "mark": "bar",
        "encoding": {
            "y": {"field": "stage", "type": "nominal", "sort": {"field": "position"}, "title": None},
            "x": {"field": "records", "type": "quantitative", "stack": "zero"},
            "color": {"field": "outcome", "type": "nominal", "scale": {"domain": ["passed", "rejected"], "range": ["#4c78a8", "#e45756"]}},
            "tooltip": [{"field": "stage"}, {"field": "outcome"}, {"field": "records", "format": ","}],
        },
    })


def length_histogram(bins: pl.DataFrame) -> None:
    """Record lengths in characters, kept and rejected stacked (chars_from, chars_to, status, records)."""
    st.vega_lite_chart(bins.to_pandas(), {
        "mark": "bar",
        "encoding": {
            "x": {"field": "chars_from", "type": "quantitative", "bin": {"binned": True}, "title": "characters"},
            "x2": {"field": "chars_to"},
            "y": {"field": "records", "type": "quantitative", "stack": "zero"},
            "color": {"field": "status", "type": "nominal", "scale": {"domain": ["kept", "rejected"], "range": ["#4c78a8", "#e45756"]}},
            "tooltip": [{"field": "status"}, {"field": "chars_from", "format": ".0f"}, {"field": "records", "format": ","}],
        },
    })


def loss_curves(curves: pl.DataFrame) -> None:
    """Training loss and eval loss by step (step, loss, eval_loss; null where not measured)."""
    data = curves.unpivot(index="step", variable_name="curve", value_name="value").drop_nulls("value")
    st.vega_lite_chart(data.to_pandas(), {
        "mark": {"type": "line", "point": True},
        "encoding": {
            "x": {"field": "step", "type": "quantitative"},
            "y": {"field": "value", "type": "quantitative", "title": "loss", "scale": {"zero": False}},
            "color": {"field": "curve", "type": "nominal"},
            "tooltip": [{"field": "curve"}, {"field": "step"}, {"field": "value", "format": ".4f"}],
        },
    })


def metric_deltas(deltas: pl.DataFrame) -> None:
    """Each metric's change (fine-tune minus base) with its 95% interval, one small panel per metric (their
    scales differ), coloured by verdict; the dashed line is no change (task, metric, delta, ci_low, ci_high,
    verdict)."""
    colour: dict[str, Any] = {"field": "verdict", "type": "nominal", "scale": VERDICT_COLOURS, "legend": {"orient": "top", "title": None}}
    data = deltas.with_columns(label=pl.col("task") + "/" + pl.col("metric"))
    st.vega_lite_chart(data.to_pandas(), {
        "facet": {"field": "label", "type": "nominal", "title": None},
        "columns": 3,
        "resolve": {"scale": {"x": "independent"}},
        "spec": {"width": 240, "height": 30, "layer": [
            {"mark": {"type": "rule", "strokeWidth": 3},
             "encoding": {"x": {"field": "ci_low", "type": "quantitative", "title": None, "scale": {"zero": True, "nice": True}},
                          "x2": {"field": "ci_high"}, "color": colour}},
            {"mark": {"type": "point", "filled": True, "size": 80},
             "encoding": {"x": {"field": "delta", "type": "quantitative"}, "color": colour,
                          "tooltip": [{"field": f} for f in ("task", "metric", "delta", "ci_low", "ci_high", "verdict")]}},
            {"mark": {"type": "rule", "strokeDash": [4, 3], "color": "black"}, "encoding": {"x": {"datum": 0}}},
        ]},
    }, width="content")
