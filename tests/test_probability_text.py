"""A probability is never shown to a reader as certainty: not in the probability panel, the worklist
column or the report (a 0.996 that rounding lifts to "100%" reads as a sure thing)."""

import math

import pytest

from cxrviewer.gui import viewmath as vm
from cxrviewer.probability_text import percent


@pytest.mark.parametrize("p, decimals, text", [
    (0.996, 0, ">99%"), (0.9949, 0, "99%"), (0.004, 0, "<1%"), (0.0051, 0, "1%"), (0.5, 0, "50%"),
    (0.99951, 1, ">99.9%"), (0.9994, 1, "99.9%"), (0.00049, 1, "<0.1%"), (0.0005001, 1, "0.1%"),
    (1.0, 1, ">99.9%"), (0.0, 1, "<0.1%"), (0.1234, 2, "12.34%"), (math.nan, 1, "n/a"),
])
def test_percent_never_rounds_to_certainty(p, decimals, text):
    assert percent(p, decimals) == text


def test_the_worklist_column_does_not_read_100_percent():
    row = vm.WorklistRow("/a/b.png", "b.png", "Normal", 0.996, 0.004)
    assert row.reading() == ">99% Normal" and row.reading(full=True) == ">99% Normal"
    assert vm.WorklistRow("/a/c.png", "c.png", "Normal", 0.834, 0.166).reading() == "83% Normal"


def test_the_probability_panel_writes_what_it_paints_without_certainty(qtbot):
    from cxrviewer.gui.probability_panel import ProbabilityPanel

    panel = ProbabilityPanel()
    qtbot.addWidget(panel)
    panel.set_probabilities(["Normal", "Pneumonia", "COVID-19"], [0.99962, 0.00030, 0.00008], "model")
    assert [t for _, _, t in panel.readouts()] == [">99.9%", "<0.1%", "<0.1%"]
    panel.set_probabilities(["Normal", "Pneumonia", "COVID-19"], [0.25, 0.7, 0.05], "model")
    assert panel.readouts()[0][0] == "Pneumonia" and [t for _, _, t in panel.readouts()] == ["70.0%", "25.0%", "5.0%"]
    panel.resize(320, 160)
    panel.grab()  # paints through readouts()
