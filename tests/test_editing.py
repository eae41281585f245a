"""Nested editing of WT/TC/ET layers with one undo step per edit (napari layer models, no Qt)."""

import numpy as np

from napari_sevnet.editing import apply_edit, editor_of, nested_region_layers


def make_group(shape=(4, 16, 16)):
    regions = np.zeros((3, *shape), bool)
    regions[0, :, 2:14, 2:14] = True  # WT
    regions[1, :, 4:12, 4:12] = True  # TC
    regions[2, :, 6:10, 6:10] = True  # ET
    layers = nested_region_layers(regions, **{r: {"name": r} for r in ("WT", "TC", "ET")})
    return dict(zip(("WT", "TC", "ET"), layers)), regions


def state(layers):
    return np.stack([np.asarray(layers[r].data) > 0 for r in ("WT", "TC", "ET")])


def nested(regions):
    return (regions[1] <= regions[0]).all() and (regions[2] <= regions[1]).all()


def test_painting_et_outside_the_core_grows_tc_and_wt_and_one_undo_reverts_all_three():
    layers, before = make_group()
    changes = []
    editor_of(layers["WT"]).on_change.append(lambda: changes.append(1))
    target = (np.array([1, 1]), np.array([0, 15]), np.array([0, 15]))  # outside WT altogether
    layers["ET"].data_setitem(target, 1)
    after = state(layers)
    assert after[:, 1, 0, 0].all() and after[:, 1, 15, 15].all() and nested(after)
    layers["TC"].undo()  # Ctrl+Z on any of the three layers
    np.testing.assert_array_equal(state(layers), before)
    layers["ET"].redo()
    np.testing.assert_array_equal(state(layers), after)
    assert len(changes) == 3, "the volumes are told about the edit, the undo and the redo"


def test_the_tally_of_edits_follows_undo_and_redo():
    layers, _ = make_group()
    editor = editor_of(layers["WT"])
    layers["WT"].data_setitem((np.array([0, 0]), np.array([0, 1]), np.array([0, 0])), 1)  # a stroke of 2 voxels
    layers["TC"].data_setitem((np.array([1]), np.array([2]), np.array([2])), 1)  # one of 1 voxel
    assert editor.counts == {"brush": {"edits": 2, "voxels": 3, "undone": 0}}
    layers["ET"].undo()
    assert editor.counts["brush"] == {"edits": 1, "voxels": 2, "undone": 1}
    layers["ET"].redo()
    assert editor.counts["brush"] == {"edits": 2, "voxels": 3, "undone": 0}
    layers["WT"].undo()
    layers["WT"].undo()
    layers["WT"].data_setitem((np.array([3]), np.array([0]), np.array([15])), 1)  # a new stroke: the two undone stay undone
    assert editor.counts["brush"] == {"edits": 1, "voxels": 1, "undone": 2}
    editor.retract()  # taken back to be made again differently (the click slider): not counted at all
    assert editor.counts["brush"] == {"edits": 0, "voxels": 0, "undone": 2}
    layers["WT"].redo()  # nothing to redo: the retracted edit is gone
    assert editor.counts["brush"]["edits"] == 0 and not (np.asarray(layers["WT"].data)[3, 0, 15])


def test_erasing_wt_erases_the_core_and_erasing_tc_keeps_wt():
    layers, before = make_group()
    layers["WT"].fill((2, 8, 8), 0)  # the bucket on WT: the whole tumour of that slice... and the cores under it
    after = state(layers)
    assert not after[:, 2].any() and nested(after) and after[0, 1].any()
    layers["WT"].undo()
    np.testing.assert_array_equal(state(layers), before)
    core = (np.array([0] * 4), np.array([5, 5, 6, 7]), np.array([5, 6, 7, 7]))
    layers["TC"].data_setitem(core, 0)
    erased = state(layers)
    assert not erased[1][core].any() and not erased[2][core].any() and erased[0][core].all() and nested(erased)


def test_a_region_layer_paints_one_and_shows_any_other_value():
    from napari_sevnet.layers import LayerInfo, region_labels

    regions = np.zeros((3, 4, 16, 16), bool)
    layers = dict(zip(("WT", "TC", "ET"), region_labels(regions, (1, 1, 1), (0, 0, 0), LayerInfo(case_id="c", run=1))))
    assert [layer.name for layer in layers.values()] == ["c WT (run 1)", "c TC (run 1)", "c ET (run 1)"]
    et = layers["ET"]
    et.selected_label = 2  # napari's "new label" button
    assert et.selected_label == 1
    et.data_setitem((np.array([0]), np.array([1]), np.array([1])), 2)  # a script writing another value
    assert state(layers)[:, 0, 1, 1].all(), "counted as ET, so TC and WT grew around it"
    assert et.colormap.map(np.array([2]))[0][3] > 0, "and drawn in the ET colour, not invisible"


def test_a_tool_edit_given_only_inside_its_box_equals_the_same_edit_given_as_a_full_mask():
    box = (slice(1, 3), slice(0, 8), slice(0, 8))
    edited = []
    for inside_only in (False, True):
        layers, regions = make_group()
        wanted = regions[0].copy()
        wanted[box] = False  # a removing click's ball: WT (and so TC and ET) gone there
        wanted[0, 0, 0] = True  # outside the box: not looked at
        changed = apply_edit(layers["WT"], wanted[box] if inside_only else wanted, "click", box=box)
        edited.append((changed, state(layers), editor_of(layers["WT"]).counts["click"]))
    assert edited[0][0] == edited[1][0] == int(regions[0][box].sum())
    np.testing.assert_array_equal(edited[0][1], edited[1][1])
    assert not edited[1][1][:, 0, 0, 0].any() and not edited[1][1][(slice(None), *box)].any() and nested(edited[1][1])
    assert edited[0][2] == edited[1][2] == {"edits": 1, "voxels": edited[0][0], "undone": 0}
