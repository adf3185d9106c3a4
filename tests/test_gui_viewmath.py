"""The Qt-free arithmetic behind the viewer: transforms, window/level dragging, worklist order."""

import pytest

from cxrviewer.film.types import Window
from cxrviewer.gui import viewmath as vm


@pytest.mark.parametrize("rot", vm.ROTATIONS)
@pytest.mark.parametrize("fh", [False, True])
@pytest.mark.parametrize("fv", [False, True])
def test_orientation_keeps_the_film_inside_the_oriented_frame(rot, fh, fv):
    w, h = 40, 30
    m = vm.orientation_matrix(w, h, rot, fh, fv)
    ow, oh = vm.oriented_size(w, h, rot)
    corners = [vm.map_point(m, x, y) for x, y in ((0, 0), (w, 0), (0, h), (w, h))]
    xs, ys = zip(*corners)
    assert (min(xs), max(xs), min(ys), max(ys)) == pytest.approx((0, ow, 0, oh))


def test_rotation_90_is_clockwise():
    m = vm.orientation_matrix(40, 30, 90, False, False)
    # the film's top-left corner goes to the top-right of the rotated image
    assert vm.map_point(m, 0, 0) == pytest.approx((30, 0))


def test_screen_flip_follows_the_screen_after_rotation():
    st = vm.ViewState(rotation=90)
    assert vm.screen_flip(st, horizontal=True).flip_v
    assert vm.screen_flip(vm.ViewState(), horizontal=True).flip_h


def test_zoom_about_keeps_the_point_under_the_cursor():
    w, h, vw, vh = 300, 200, 640, 480
    st = vm.fit_state(w, h, vm.ViewState(), vw, vh)
    anchor = (100.0, 350.0)
    before = vm.screen_to_film(w, h, st, vw, vh, *anchor)
    st2 = vm.zoom_about(st, 2.5, anchor, vw, vh)
    after = vm.screen_to_film(w, h, st2, vw, vh, *anchor)
    assert st2.zoom == pytest.approx(st.zoom * 2.5)
    assert after == pytest.approx(before)
    assert not st2.fit


def test_fit_shows_the_whole_film_and_rotate_keeps_the_centre():
    st = vm.fit_state(1000, 500, vm.ViewState(), 500, 500)
    m = vm.view_matrix(1000, 500, st, 500, 500)
    x0, y0 = vm.map_point(m, 0, 0)
    x1, y1 = vm.map_point(m, 1000, 500)
    assert 0 <= x0 < x1 <= 500 and 0 <= y0 < y1 <= 500
    c = vm.screen_to_film(1000, 500, st, 500, 500, 250, 250)
    st_r = vm.rotate(st, 1000, 500)
    assert vm.screen_to_film(1000, 500, st_r, 500, 500, 250, 250) == pytest.approx(c)


def test_pan_moves_the_image_with_the_mouse():
    st = vm.ViewState(zoom=2.0, center=(50, 50))
    st2 = vm.pan(st, 20, -10)
    assert st2.center == pytest.approx((40, 55))


def test_drag_window_pacs_convention():
    start = Window(center=2000, width=1000)
    rng = (0, 4095)
    wider = vm.drag_window(start, 100, 0, rng)
    assert wider.width > start.width and wider.center == start.center
    higher = vm.drag_window(start, 0, 50, rng)
    assert higher.center > start.center and higher.width == start.width
    narrow = vm.drag_window(start, -100000, 0, rng)
    assert narrow.width >= 1
    # an 8-bit film moves in proportion to its range
    assert vm.drag_sensitivity((0, 255)) < vm.drag_sensitivity((0, 4095))


def test_preview_step_bounds_the_interactive_render():
    assert vm.preview_step((512, 512)) == 1
    s = vm.preview_step((3000, 3000))
    assert (3000 // s) * (3000 // s) <= 1_100_000


def test_suspicion_uses_the_normal_class_when_there_is_one():
    assert vm.suspicion(["Normal", "Pneumonia"], [0.8, 0.2]) == pytest.approx(0.2)
    assert vm.suspicion(["COVID", "Viral"], [0.3, 0.7]) == pytest.approx(0.7)
    assert vm.suspicion([], []) == -1.0


def test_sort_rows_puts_unpredicted_films_last():
    rows = [vm.WorklistRow("/a/b.png", "b.png", "Pneumonia", 0.9, 0.9),
            vm.WorklistRow("/a/a.png", "a.png"),
            vm.WorklistRow("/a/c.png", "c.png", "Normal", 0.7, 0.3)]
    assert [r.name for r in vm.sort_rows(rows, "name")] == ["a.png", "b.png", "c.png"]
    assert [r.name for r in vm.sort_rows(rows, "suspicion")] == ["b.png", "c.png", "a.png"]
    assert [r.name for r in vm.sort_rows(rows, "top")] == ["b.png", "c.png", "a.png"]


@pytest.mark.parametrize("name, classes, shown", [
    ("Pneumonia-Bacterial", ["Normal", "Pneumonia-Bacterial", "Pneumonia-Viral"], "Bacterial"),
    ("Normal", ["Normal", "Pneumonia-Bacterial", "Pneumonia-Viral"], "Normal"),
    ("Pneumonia", ["Normal", "Pneumonia"], "Pneumonia"),
    ("COVID-19", ["No_finding", "Pneumonia", "COVID-19"], "COVID-19"),  # nothing shares "COVID-": kept whole
])
def test_worklist_shows_the_part_of_a_class_name_that_tells_it_apart(name, classes, shown):
    assert vm.short_class_name(name, classes) == shown


def test_step_index_clamps():
    assert vm.step_index(-1, 3, 1) == 0
    assert vm.step_index(2, 3, 1) == 2
    assert vm.step_index(0, 3, -1) == 0
    assert vm.step_index(0, 0, 1) == -1


def test_sorted_probabilities_and_heatmap_request():
    assert vm.sorted_probabilities(["a", "b", "c"], [0.2, 0.5, 0.3])[0] == ("b", 0.5)
    r = vm.HeatmapRequest(method="lime", opacity=0.3)
    assert r.active and r.cache_key("f", "m") == ("f", "m", "lime", None)
