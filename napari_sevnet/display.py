"""How a case looks in napari: radiological orientation with its sides named, and regions that can be told apart.

Orientation. Arrays are (Z, Y, X) with Z to Superior, Y to Anterior, X to the
patient's Right (:mod:`napari_sevnet.io`). napari draws the first displayed
axis downwards and the second to the right, which puts anterior at the bottom
and the patient's right on the right. :func:`show_radiological` turns the 2D
camera so the positive end of the vertical axis is up and of the horizontal
axis on the left: anterior (or superior) up and the patient's right on the
screen's left in every plane, the radiological convention
(``SEVNET_ORIENTATION=neurological`` keeps the right on the right), a
text overlay names the four sides of the plane on screen, and the slider
names the plane it steps through (axial, coronal, sagittal).

Regions. WT (green), TC (red) and ET (yellow) stacked as fills blend into one
orange blob. The layer being edited (the selected one) is drawn filled, the
other regions of its result as outlines (:func:`style_regions`), so each
boundary stays visible; in 3D view, where napari draws no contours, all are filled.
"""

from __future__ import annotations

import os
import weakref

ORIENTATIONS = {"radiological": ("up", "left"), "neurological": ("up", "right")}
#: the (positive, negative) end of canonical Z, Y and X
AXIS_ENDS = (("S", "I"), ("A", "P"), ("R", "L"))
#: the plane a slider along canonical Z, Y or X steps through (napari names the axes -3, -2, -1)
SLICE_PLANES = ("axial", "coronal", "sagittal")
OUTLINE_PX = 2
FILL_OPACITY = 0.5
_OUTLINES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # viewer -> whether regions not edited are outlined
_CONVENTION: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # viewer -> convention its side labels follow


def orientation_setting() -> str:
    """``SEVNET_ORIENTATION``: radiological (default) or neurological."""
    value = os.environ.get("SEVNET_ORIENTATION", "radiological").strip().lower()
    if value not in ORIENTATIONS:
        raise ValueError(f"SEVNET_ORIENTATION must be one of {sorted(ORIENTATIONS)}, not {value!r}")
    return value


def screen_sides(displayed: tuple[int, int], convention: str) -> dict[str, str]:
    """Which anatomical side lies at the top, bottom, left and right of the screen for the displayed axes (Z=0, Y=1, X=2)."""
    vertical, horizontal = displayed
    up, left = AXIS_ENDS[vertical][0], AXIS_ENDS[horizontal][0]
    down, right = AXIS_ENDS[vertical][1], AXIS_ENDS[horizontal][1]
    if ORIENTATIONS[convention][1] == "right":
        left, right = right, left
    return {"top": up, "bottom": down, "left": left, "right": right}


def camera(viewer):
    """The viewer's camera: ``viewer.scene.camera`` from napari 0.9 on (where ``viewer.camera`` is deprecated), ``viewer.camera`` before."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None else viewer.camera


def show_radiological(viewer, convention: str | None = None) -> None:
    """Orient the viewer's 2D camera by ``convention`` (default: the setting) and name the sides on screen."""
    convention = convention or orientation_setting()
    camera(viewer).orientation2d = ORIENTATIONS[convention]
    viewer.text_overlay.position = "top_left"
    viewer.text_overlay.font_size = 11
    viewer.text_overlay.visible = True
    watched = viewer in _CONVENTION
    _CONVENTION[viewer] = convention
    _label_sides(viewer)
    if not watched:  # the side labels follow the plane on screen
        ref = weakref.ref(viewer)

        def update(_event=None):
            if ref() is not None:
                _label_sides(ref())

        viewer.dims.events.order.connect(update)
        viewer.dims.events.ndisplay.connect(update)


def _label_sides(viewer) -> None:
    convention = _CONVENTION[viewer]
    if viewer.dims.ndim == 3 and all(label.lstrip("-").isdigit() for label in viewer.dims.axis_labels):  # napari's own names, not the user's
        viewer.dims.axis_labels = SLICE_PLANES
    if viewer.dims.ndisplay != 2 or viewer.dims.ndim != 3:
        viewer.text_overlay.text = f"{convention}" if viewer.dims.ndim == 3 else ""
        return
    sides = screen_sides(tuple(viewer.dims.displayed), convention)
    viewer.text_overlay.text = f"{sides['top']} up, {sides['left']} on the left ({convention})   {sides['right']} right, {sides['bottom']} down"


def region_layer_name(case_id: str | None, region: str, run: int | None) -> str:
    """'Brats18_X WT (run 2)' for a model result, 'Brats18_X WT (file)' for a mask read from the case's files."""
    return f"{case_id or 'case'} {region} " + (f"(run {run})" if run else "(file)")


def style_regions(layers: dict, editing: str | None, outlines: bool = True) -> None:
    """Fill the region being edited, outline the others of its result (or fill all when ``outlines`` is off)."""
    for region, layer in layers.items():
        outline = outlines and region != editing
        layer.contour = OUTLINE_PX if outline else 0
        layer.opacity = 1.0 if outline else FILL_OPACITY


def next_run(layers, case_id: str | None) -> int:
    """The run number of a new result of ``case_id`` among ``layers`` (1 for the first)."""
    from napari_sevnet.layers import LayerInfo

    runs = [info.run for info in (LayerInfo.from_layer(layer) for layer in layers) if info is not None and info.case_id == case_id and info.run]
    return max(runs, default=0) + 1



def follow_selection(viewer, outlines: bool | None = None) -> None:
    """Restyle a result's regions whenever another of its layers is selected; ``outlines`` switches outlines on or off."""
    watched = viewer in _OUTLINES
    _OUTLINES[viewer] = _OUTLINES.get(viewer, True) if outlines is None else bool(outlines)
    if not watched:
        ref = weakref.ref(viewer)
        viewer.layers.selection.events.active.connect(lambda _event=None: ref() is not None and restyle(ref()))
        viewer.dims.events.ndisplay.connect(lambda _event=None: ref() is not None and restyle(ref()))  # napari draws no contours in 3D
    restyle(viewer)


def restyle(viewer) -> None:
    """Style the regions of the selected layer's result (the selected region filled, its outer and inner ones outlined)."""
    from napari_sevnet.layers import LayerInfo, region_group

    active = viewer.layers.selection.active
    info = LayerInfo.from_layer(active) if active is not None else None
    if info is None or info.region is None:
        return
    try:
        group = region_group(viewer.layers, active)
    except Exception:  # noqa: BLE001 - a layer of the group was deleted: nothing to restyle
        return
    style_regions(group, info.region, _OUTLINES.get(viewer, True) and viewer.dims.ndisplay == 2)
