"""Attention dock widget: what SEV-Net's Squeeze-and-Excitation blocks up-weighted for this case.

After a Segment run, the WT/TC/ET layers carry the SE excitation of every
stage (averaged over windows and flips). The widget draws them as a heatmap
(stages x channels) and, for the selected stage, as bars; clicking a bar (or
choosing a channel and pressing "Show feature map") adds that channel's
feature map, resampled to the image grid, as an image layer over the scan.
"""

from __future__ import annotations

import threading

import numpy as np
from magicgui.widgets import ComboBox, Label, PushButton, SpinBox

from napari_sevnet.checkpoint import attention_caveat
from napari_sevnet.layers import LayerInfo, segmented_layers
from napari_sevnet.widgets import shared_predictor
from napari_sevnet.widgets.base import DockWidget

FEATURE_MAP_KEY = "sevnet_feature_map"  # a feature-map layer's metadata: the result, stage and channel it shows


class AttentionWidget(DockWidget):
    def __init__(self, napari_viewer):
        super().__init__(napari_viewer)
        self._source = ComboBox(label="Result", choices=self._result_layers, nullable=True, tooltip="A WT layer made by the Segment widget")
        self._stage = ComboBox(label="Stage", choices=self._stages, tooltip="enc = encoder, dec = decoder stage; 1 = full resolution")
        self._channel = SpinBox(label="Channel", min=0, max=0)
        self._show = PushButton(text="Show feature map")
        self._contribute = PushButton(text="What each sequence contributed", tooltip="Segment the case again without each sequence (one pass each; a model trained for missing sequences)")
        self._cancel = PushButton(text="Cancel", enabled=False, tooltip="Stop working out the contributions")
        self._status = Label(value="")
        self._status.native.setWordWrap(True)
        self.extend([self._source, self._stage, self._channel, self._show, self._contribute, self._cancel, self._status])

        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(4, 4.5), tight_layout=True)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(320)
        self.native.layout().addWidget(self.canvas)
        self.canvas.mpl_connect("button_press_event", self._on_click)
        self._drawn = None
        self.contributions: dict[int, dict] = {}  # id(WT layer) -> {sequence: {region: drop}}
        self._job = ""  # what the running worker computes, for the words when another click comes meanwhile
        self._cancel_event: threading.Event | None = None

        self._source.changed.connect(self._on_source)
        self._stage.changed.connect(self._on_stage)
        self._channel.changed.connect(lambda _v: self.draw())
        self._show.changed.connect(lambda: self.show_feature_map(self._stage.value, self._channel.value))
        self._contribute.changed.connect(self.compute_contributions)
        self._cancel.changed.connect(self.cancel)
        self.on_layers_changed(self._refresh)
        self._refresh()

    # ------------------------------------------------------------------ data

    def _result_layers(self, _widget=None):
        infos = ((layer, LayerInfo.from_layer(layer)) for layer in self._viewer.layers)
        return [layer for layer, info in infos if info is not None and info.attention and info.region == "WT"]

    @property
    def attention(self) -> dict[str, np.ndarray]:
        layer = self._source.value
        return LayerInfo.from_layer(layer).attention if layer is not None else {}

    def _stages(self, _widget=None):
        return list(self.attention)

    def _refresh(self, event=None):
        self.reset_choices()
        layers = self._result_layers()
        if layers and self._source.value is None or (layers and self._source.value not in layers):
            self._source.value = layers[-1]
        self._on_source()

    def _on_source(self, _value=None):
        layer = self._source.value
        self._status.value = (attention_caveat(LayerInfo.from_layer(layer).checkpoint) or "") if layer is not None else ""
        self._stage.reset_choices()
        if self._stage.choices and self._stage.value is None:
            self._stage.value = self._stage.choices[0]
        self._on_stage()

    def _on_stage(self, _value=None):
        weights = self.attention.get(self._stage.value)
        self._channel.max = max(len(weights) - 1, 0) if weights is not None else 0
        self.draw()

    # ------------------------------------------------------------------ plot

    def draw(self):
        """Redraw the figure when the result, stage or channel shown changed (a redraw costs ~80 ms)."""
        key = (id(self._source.value), self._stage.value, self._channel.value, id(self.contributions.get(id(self._source.value))))
        if key == self._drawn:
            return
        self._drawn = key
        self.figure.clear()
        attention = self.attention
        if not attention:
            self.figure.text(0.5, 0.5, "Run Segment first:\nthe SE weights of its result appear here", ha="center", va="center")
            self.canvas.draw_idle()
            return
        stages = list(attention)
        width = max(len(v) for v in attention.values())
        grid = np.full((len(stages), width), np.nan)
        for i, s in enumerate(stages):
            grid[i, : len(attention[s])] = attention[s]
        contributions = self.contributions.get(id(self._source.value))
        panels = self.figure.subplots(3 if contributions else 2, 1, gridspec_kw={"height_ratios": [3, 2, 2] if contributions else [3, 2]})
        top, bottom = panels[0], panels[1]
        if contributions:
            self._draw_contributions(panels[2], contributions)
        im = top.imshow(grid, aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
        top.set_yticks(range(len(stages)), stages)
        top.set_xlabel("channel")
        top.set_title("SE excitation per stage")
        self.figure.colorbar(im, ax=top, fraction=0.05)
        stage = self._stage.value
        if stage in attention:
            w = attention[stage]
            bars = bottom.bar(range(len(w)), w, color="tab:blue", picker=True)
            if self._channel.value < len(bars):
                bars[self._channel.value].set_color("tab:orange")
            bottom.set_ylim(0, 1)
            bottom.set_title(f"{stage}: click a channel to see its feature map", fontsize=9)
            bottom.set_xlabel("channel")
        self._bar_axes = bottom
        self.canvas.draw_idle()

    @staticmethod
    def _draw_contributions(ax, contributions: dict) -> None:
        from napari_sevnet.io import MODALITY_LABELS
        from napari_sevnet.regions import REGIONS

        sequences = list(contributions)
        grid = np.array([[contributions[m][r] for r in REGIONS] for m in sequences])
        ax.imshow(grid, cmap="magma", vmin=0, vmax=max(float(grid.max()), 0.05), aspect="auto")
        ax.set_xticks(range(len(REGIONS)), REGIONS)
        ax.set_yticks(range(len(sequences)), [MODALITY_LABELS[m] for m in sequences])
        for (i, j), value in np.ndenumerate(grid):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", color="white" if value < 0.6 * grid.max() else "black", fontsize=8)
        ax.set_title("drop in mean probability without each sequence", fontsize=9)

    # ------------------------------------------------------------------ one job at a time

    def _busy(self) -> bool:
        """Whether a computation runs (then a click says so instead of starting a second one beside it)."""
        if self.worker is None:
            return False
        self._status.value = f"still {self._job}: wait for it" + (", or cancel it" if self._cancel_event is not None else "")
        return True

    def _start(self, job: str, work, returned, failure: str, cancel: threading.Event | None = None):
        self._job, self._cancel_event = job, cancel
        self._status.value = job + "..."
        self._show.enabled = self._contribute.enabled = False
        self._cancel.enabled = cancel is not None
        return self.start_worker(work, returned=returned, errored=lambda exc: self._failed(failure, exc), finished=self._on_finished)

    def _failed(self, failure: str, exc: BaseException) -> None:
        message = self.report_error(failure, exc)
        try:
            self._status.value = f"{failure}: {message}"
        except RuntimeError:  # the dock was closed while it worked
            pass

    def cancel(self) -> None:
        if self._cancel_event is not None:
            self._cancel_event.set()
            self._status.value = "cancelling..."

    def closed(self) -> None:
        self.cancel()

    def _on_finished(self):
        self.worker, self._job, self._cancel_event = None, "", None
        try:
            self._show.enabled = self._contribute.enabled = True
            self._cancel.enabled = False
        except RuntimeError:  # the dock was closed while it worked
            pass

    def compute_contributions(self):
        """Segment the selected result's case again without each sequence, in a worker; draw the sequences x regions chart."""
        from napari.qt.threading import thread_worker

        layer = self._source.value
        if layer is None or self._busy():
            return None
        meta = LayerInfo.from_layer(layer)
        sources = self._source_layers(meta, "Contributions failed")
        if sources is None:
            return None
        volumes = {m: source.data for m, source in sources.items()}
        spacing = tuple(float(v) for v in next(iter(sources.values())).scale)
        checkpoint, device, viewer, sequences = meta.checkpoint, meta.device or "cpu", self._viewer, tuple(sources)
        cancel = threading.Event()

        @thread_worker
        def work():
            from napari_sevnet.contributions import sequence_contributions

            return sequence_contributions(shared_predictor(viewer, checkpoint, device), _model_input(volumes), sequences=sequences, spacing=spacing, cancel=cancel)

        def show(result):
            self.contributions[id(layer)] = result
            self._status.value = "contributions: " + "; ".join(f"{m}: ET {v['ET']:+.2f}" for m, v in result.items())
            self.draw()

        return self._start(f"segmenting again without each of {len(sequences)} sequences", work, show, "Contributions", cancel)

    def _on_click(self, event):
        if event.inaxes is getattr(self, "_bar_axes", None) and event.xdata is not None:
            channel = int(round(event.xdata))
            if 0 <= channel <= self._channel.max:
                self._channel.value = channel
                self.show_feature_map(self._stage.value, channel)

    # ------------------------------------------------------------------ feature maps

    def show_feature_map(self, stage: str, channel: int):
        """Compute the stage's feature maps in a worker; add channel ``channel`` as an image layer."""
        from napari.qt.threading import thread_worker

        layer = self._source.value
        if layer is None or stage is None:
            return None
        meta = LayerInfo.from_layer(layer)
        shown = {"result": meta.group, "stage": stage, "channel": channel}  # which map of which result a layer holds
        for open_map in self._viewer.layers:
            if open_map.metadata.get(FEATURE_MAP_KEY) == shown:  # open already: shown again, not computed and added twice
                open_map.visible = True
                self._viewer.layers.selection.active = open_map
                self._status.value = f"'{open_map.name}' is open already"
                return None
        if self._busy():  # each map holds GBs while it is computed: clicks on bars meanwhile must not pile them up
            return None
        sources = self._source_layers(meta, "Feature map failed")
        if sources is None:
            return None
        volumes = {m: source.data for m, source in sources.items()}
        reference = next(iter(sources.values()))
        spacing = tuple(float(v) for v in reference.scale)
        checkpoint, device, viewer = meta.checkpoint, meta.device or "cpu", self._viewer

        @thread_worker
        def work():
            fmap = shared_predictor(viewer, checkpoint, device).feature_map(_model_input(volumes), stage, channel, spacing=spacing)
            lo, hi = np.percentile(fmap[fmap != 0], [1, 99]) if np.any(fmap) else (0.0, 1.0)
            return fmap, (float(lo), float(max(hi, lo + 1e-6)))

        def add(out):
            fmap, limits = out
            name = f"{stage} ch{channel} feature map"
            self._viewer.add_image(fmap, name=name, scale=reference.scale, translate=reference.translate, colormap="inferno", blending="additive", opacity=0.6,
                                   contrast_limits=limits, metadata={FEATURE_MAP_KEY: shown})
            self._status.value = f"added '{name}'"

        return self._start(f"computing the {stage} ch{channel} feature map", work, add, "Feature map failed")

    def _source_layers(self, meta: LayerInfo, failure: str) -> dict | None:
        """Sequence -> the image layer the result was segmented from (the sequences it had); None, reported, when one was closed."""
        from napari_sevnet.io import MODALITIES

        try:
            names = segmented_layers(meta, self._viewer.layers)
            return {m: self._viewer.layers[names[m]] for m in meta.sequences or MODALITIES}
        except KeyError as exc:
            self.report_error(failure, KeyError(f"the image layer {exc} used for this result was removed; run Segment again"))
            return None



def _model_input(volumes: dict[str, np.ndarray]) -> np.ndarray:
    """(4, Z, Y, X) float32 in the model's sequence order, zero for a sequence the case lacks (~140 MB: built in the worker)."""
    from napari_sevnet.io import MODALITIES

    shape = next(iter(volumes.values())).shape
    return np.stack([np.asarray(volumes[m], dtype=np.float32) if m in volumes else np.zeros(shape, np.float32) for m in MODALITIES])
