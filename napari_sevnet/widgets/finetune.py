"""Fine-tune dock widget: run ``sevnet-train`` on an exported dataset in a subprocess and follow it.

The trainer runs in its own process (a ``QProcess``: no thread, no blocking),
so a crash or an out-of-memory there never takes napari down. Its
``--progress-json`` lines drive the progress bar, the ETA, the loss and
validation-Dice plot (epoch 0: the starting model) and the log; a run whose
best epoch ends below the starting model says so when it finishes, and so does one
that segments the replay cases it kept out (other patients) worse than the model it started from. Cancel sends SIGTERM: the trainer stops as on
Ctrl-C and keeps the checkpoint of the last finished epoch. "Use this model"
hands the new checkpoint to the Segment widget (and re-segments); the run
folder stays in ``DATASET/runs/`` for reproducibility.
"""

from __future__ import annotations

import datetime as _dt
import json
import shutil
import sys
from pathlib import Path

import yaml
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    FileEdit,
    Label,
    LineEdit,
    ProgressBar,
    PushButton,
    SpinBox,
)
from matplotlib.ticker import MaxNLocator
from qtpy.QtCore import QProcess, QProcessEnvironment, QTimer
from qtpy.QtWidgets import QPlainTextEdit, QSizePolicy

from napari_sevnet.errors import InputError
from napari_sevnet.export import RUNS_DIR, active_cases, read_manifest
from napari_sevnet.layers import REGION_COLOURS
from napari_sevnet.regions import REGIONS
from napari_sevnet.widgets import find_widget
from napari_sevnet.widgets.base import DockWidget, chosen_path
from training import events

#: what the plotted Dice is measured on, by the trainer's validation kind
DICE_AXIS = {"held_out": "Dice on held-out cases", "training_cases": "Dice on the exported cases"}
KILL_AFTER_MS = 15_000  # Cancel: SIGTERM first, SIGKILL if the trainer has not stopped by then
TOOLTIPS = {
    "dataset": "A dataset written by the Export widget or sevnet-export (it has a dataset.json).",
    "base": "Checkpoint to start from. Empty: the model the Segment widget uses.",
    "lr": "Learning rate (AdamW, decayed to 0 over the run). The default, 1e-4, harmed other patients' real scans less than 1e-3, "
          "with Replay data or without (README, 'The dock's learning rate').",
    "replay": "Folder of original labelled cases (such as BraTS training cases) mixed into training so the model keeps what it knew; "
              "without it, a fine-tune on corrected cases segmented other patients' scans worse (README). Two of them are kept out and "
              "scored as other patients: include cases the model never trained on, or that check cannot tell.",
    "rerun": "After switching the model, segment the current case again (new layers; your edits stay).",
}


def trainer_program() -> list[str]:
    """The installed ``sevnet-train`` beside this interpreter, else this interpreter running the trainer module."""
    script = Path(sys.executable).with_name("sevnet-train")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "training.cli"]


def _finetune_config() -> Path:
    import training

    return Path(training.__file__).resolve().parent / "configs" / "finetune.yaml"


NO_REPLAY_WARNING = ("without Replay data, fine-tuning on corrected cases made the model segment other patients' real scans worse, "
                     "the enhancing tumour most (README, 'Fine-tuning on one corrected case'); with original labelled cases as Replay "
                     "data, less so. Without them, check the new model's masks closely on every new patient.")


def finetune_defaults() -> dict:
    """finetune.yaml's settings, the ones the benchmark measured (README: its learning rate, 1e-4, harmed other patients'
    scans less than 1e-3, with replay or without): the dock starts from them, so the two cannot drift apart."""
    return yaml.safe_load(_finetune_config().read_text(encoding="utf-8"))


UNTOLD_CHECK = ("The replay cases kept out to check it were all learnt by the starting model, and on real scans such cases held while "
                "new patients were segmented worse (README, 'Fine-tuning on one corrected case'): add labelled cases it never trained on "
                "to the Replay data for a check that can tell.")


class FineTuneWidget(DockWidget):
    def __init__(self, napari_viewer):
        super().__init__(napari_viewer)
        self._dataset = FileEdit(label="Dataset", mode="d", nullable=True, tooltip=TOOLTIPS["dataset"])
        self._base = FileEdit(label="Base model", filter="*.json", nullable=True, tooltip=TOOLTIPS["base"])
        defaults = finetune_defaults()
        self._keep_out_from = defaults["data"]["keep_out_from"]  # what the trainer, run with finetune.yaml, keeps out from
        self._default_lr = defaults["lr"]
        self._epochs = SpinBox(label="Epochs", min=1, max=1000, value=defaults["epochs"])
        self._steps = SpinBox(label="Steps per epoch", min=1, max=10_000, value=defaults["steps_per_epoch"])
        self._lr = LineEdit(label="Learning rate", value=f"{defaults['lr']:g}", tooltip=TOOLTIPS["lr"])
        self._device = ComboBox(label="Device", choices=["auto", "cpu", "cuda"], value="auto")
        self._replay = FileEdit(label="Replay data", mode="d", nullable=True, tooltip=TOOLTIPS["replay"])
        self._start = PushButton(text="Start")
        self._cancel = PushButton(text="Cancel", enabled=False)
        self._bar = ProgressBar(label="Progress", min=0, max=1000, value=0)
        self._status = Label(value="")
        self._status.native.setWordWrap(True)  # a long verdict ("worse than the starting model: ...") is read whole ...
        self._status.native.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)  # ... and never widens the dock
        self._use = PushButton(text="Use this model", enabled=False)
        self._rerun = CheckBox(text="Re-segment the current case", value=True, tooltip=TOOLTIPS["rerun"])
        self.extend([self._dataset, self._base, self._epochs, self._steps, self._lr, self._device, self._replay, self._start, self._cancel, self._bar, self._status, self._use, self._rerun])

        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(4, 2.6), tight_layout=True)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(200)
        self.log = QPlainTextEdit()
        self.log.setReadOnly(True)
        self.log.setMaximumBlockCount(2000)
        self.log.setMinimumHeight(120)
        self.native.layout().addWidget(self.canvas)
        self.native.layout().addWidget(self.log)

        self.process: QProcess | None = None
        self.run_dir: Path | None = None
        self.checkpoint: Path | None = None  # the model "Use this model" switches to
        self.losses: list[tuple[int, float]] = []
        self.dice: list[tuple[int, dict]] = []
        self.others: list[tuple[int, dict]] = []  # Dice on the replay cases the run kept out (training.events OTHERS)
        self.others_cases: list[str] = []
        self.others_learnt = 0  # how many of them the starting model trained on
        self.validation_kind: str | None = None  # what the Dice is measured on (training.events START)
        self.error_message: str | None = None
        self.exit_code: int | None = None
        self._cancelled = False
        self._stdout_tail = ""
        self._stderr_tail = ""
        self._last_stderr: str | None = None

        self._start.changed.connect(self.start)
        self._cancel.changed.connect(self.cancel)
        self._use.changed.connect(self.use_model)

    # ------------------------------------------------------------------ choices

    @property
    def dataset(self) -> Path | None:
        return chosen_path(self._dataset)

    @dataset.setter
    def dataset(self, path) -> None:
        self._dataset.value = Path(path)

    def _segment_widget(self):
        from napari_sevnet.widgets.segment import SegmentWidget

        return find_widget(self._viewer, SegmentWidget)

    def base_checkpoint(self) -> Path:
        """The chosen base model, else the Segment widget's, else the bundled demo weights."""
        from napari_sevnet.checkpoint import bundled_checkpoint

        if chosen_path(self._base) is not None:
            return chosen_path(self._base)
        segment = self._segment_widget()
        return Path(segment.checkpoint) if segment is not None and segment.checkpoint else bundled_checkpoint()

    def command(self) -> list[str]:
        """The trainer's command line; checks the choices first (InputError names the problem)."""
        from napari_sevnet.checkpoint import read_info

        dataset = self.dataset
        if dataset is None:
            raise InputError(None, "choose the dataset to fine-tune on (export a corrected case first)")
        manifest = read_manifest(dataset)
        if manifest is None:
            raise InputError(dataset, "has no dataset.json: choose a dataset written by Export or sevnet-export")
        if not active_cases(manifest):
            why = "withdraws every case it lists" if manifest["cases"] else "lists no cases yet"
            raise InputError(dataset / "dataset.json", f"{why}: export a corrected case first")
        from training.data import discover_cases

        replay = chosen_path(self._replay)
        discover_cases([dataset])  # what the trainer will read: a listed case whose files are gone is named here, not after its start
        if replay is not None:
            discover_cases([replay])
        base = self.base_checkpoint()
        read_info(base)  # a broken checkpoint is reported here, not by the subprocess
        try:
            lr = float(self._lr.value)
        except ValueError:
            raise InputError(None, f"learning rate {self._lr.value!r} is not a number") from None
        if not 0 < lr < 1:
            raise InputError(None, f"learning rate {lr} should lie between 0 and 1 ({self._default_lr:g} is the measured default)")
        if self._device.value == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise InputError(None, "no CUDA device is available here; choose cpu or auto")
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        run_dir = dataset / RUNS_DIR / f"finetune-{stamp}"
        n = 2
        while run_dir.exists():
            run_dir, n = dataset / RUNS_DIR / f"finetune-{stamp}-{n}", n + 1
        self.run_dir = run_dir
        args = [
            *trainer_program(), "--config", str(_finetune_config()), "--init", str(base), "-o", str(run_dir), "--progress-json",
            f"data.roots={json.dumps([str(dataset)])}", f"epochs={self._epochs.value}", f"steps_per_epoch={self._steps.value}", f"lr={lr}",
        ]
        if replay is not None:
            args.append(f"data.replay_roots={json.dumps([str(replay)])}")
        return args

    # ------------------------------------------------------------------ process

    def start(self):
        """Launch the trainer; returns the QProcess (None when the choices are incomplete)."""
        if self.process is not None:
            return self.process
        try:
            args = self.command()
            # in a folder of ours: `python -m` would import a user's own `training/` from napari's working directory
            self.run_dir.parent.mkdir(parents=True, exist_ok=True)
        except InputError as exc:
            self._fail(str(exc))
            return None
        except OSError as exc:
            self._fail(f"{self.run_dir.parent}: cannot create the folder for the run ({exc.strerror or exc}); copy the dataset to a folder you can write to")
            return None
        self.losses, self.dice, self.error_message, self.exit_code, self.checkpoint = [], [], None, None, None
        self.others, self.others_cases, self.others_learnt = [], [], 0
        self.validation_kind = None
        self._cancelled, self._stdout_tail, self._stderr_tail, self._last_stderr = False, "", "", None
        self._bar.value = 0
        self._use.enabled = False
        self._draw()
        self.log.clear()
        if chosen_path(self._replay) is None:
            from napari.utils.notifications import show_warning

            self.log.appendPlainText(f"warning: {NO_REPLAY_WARNING}")
            show_warning(f"Fine-tune: {NO_REPLAY_WARNING}")
        self.log.appendPlainText(f"$ {' '.join(args)}")

        process = self.process = QProcess(self.native)
        environment = QProcessEnvironment.systemEnvironment()
        if self._device.value == "cpu":
            environment.insert("CUDA_VISIBLE_DEVICES", "")
        environment.insert("PYTHONUNBUFFERED", "1")
        process.setProcessEnvironment(environment)
        process.readyReadStandardOutput.connect(self._read_stdout)
        process.readyReadStandardError.connect(self._read_stderr)
        process.finished.connect(self._on_finished)
        process.errorOccurred.connect(self._on_process_error)
        self._start.enabled, self._cancel.enabled = False, True
        self._status.value = "starting the trainer..."
        process.setWorkingDirectory(str(self.run_dir.parent))
        process.start(args[0], args[1:])
        return process

    def cancel(self):
        process = self.process
        if process is None:
            return
        self._cancelled = True
        self._status.value = "stopping after the current step..."
        process.terminate()
        QTimer.singleShot(KILL_AFTER_MS, lambda: process.kill() if self.process is process else None)

    def closed(self):
        """The dock was closed: never leave a trainer running on its own."""
        process, self.process = self.process, None
        if process is not None and process.state() != QProcess.ProcessState.NotRunning:
            process.terminate()
            if not process.waitForFinished(KILL_AFTER_MS):
                process.kill()
                process.waitForFinished(2000)

    def _complete_lines(self, data, tail_attr: str) -> list[str]:
        """Whole lines of a pipe's new output; a partial last line waits in ``tail_attr`` for the rest."""
        text = getattr(self, tail_attr) + bytes(data).decode("utf-8", "replace")
        *lines, rest = text.split("\n")
        setattr(self, tail_attr, rest)
        return [line.strip() for line in lines if line.strip()]

    def _read_stdout(self):
        if self.process is not None:
            for line in self._complete_lines(self.process.readAllStandardOutput(), "_stdout_tail"):
                self._on_line(line)

    def _read_stderr(self):
        if self.process is not None:
            for line in self._complete_lines(self.process.readAllStandardError(), "_stderr_tail"):
                self.log.appendPlainText(line)
                self._last_stderr = line

    def _on_line(self, line: str):
        try:
            event = json.loads(line)
        except ValueError:
            self.log.appendPlainText(line)
            return
        kind = event.get("event")
        if kind == events.START:
            self.validation_kind = event["validation"]
            self._status.value = f"training on {event['train_cases']} case(s), {event['device']}"
            if event["validation"] == "held_out":
                self.log.appendPlainText(f"{event['val_cases']} of the exported cases kept out of training to validate it: cases it never "
                                         "sees, whose Dice says what new patients meet (export more cases to train on more)")
            elif event["train_cases"] > 1:
                self.log.appendPlainText(f"all {event['train_cases']} exported cases trained on, and validated on themselves: the Dice says how well "
                                         f"the model now fits them, not what new patients meet (from {self._keep_out_from} cases on, a fifth is kept out to tell that)")
        elif kind == events.STEP:
            total = event["epochs"] * event["steps"]
            done = (event["epoch"] - 1) * event["steps"] + event["step"]
            self._bar.value = int(1000 * done / total)
            self._status.value = f"epoch {event['epoch']}/{event['epochs']}  loss {event['loss']:.3f}  ETA {_minutes(event['eta_s'])}"
        elif kind == events.EPOCH:
            self.losses.append((event["epoch"], event["loss"]))
            self.log.appendPlainText(f"epoch {event['epoch']}/{event['epochs']}: loss {event['loss']:.4f}")
            self._draw()
        elif kind == events.VALIDATION:
            self.dice.append((event["epoch"], event["dice"]))
            self.log.appendPlainText(f"epoch {event['epoch']}: Dice " + "  ".join(f"{r} {event['dice'][r]:.3f}" for r in REGIONS))
            self._draw()
        elif kind == events.OTHERS:
            self.others.append((event["epoch"], event["dice"]))
            self.others_cases, self.others_learnt = event["cases"], event["learnt_by_start"]
            self.log.appendPlainText(f"epoch {event['epoch']}: Dice on other patients ({', '.join(event['cases'])}, kept out of the replay) "
                                     + "  ".join(f"{r} {event['dice'][r]:.3f}" for r in REGIONS))
            self._draw()
        elif kind == events.DONE:
            self.checkpoint = Path(event["best"])
            self.log.appendPlainText(f"done in {event['seconds']:.0f} s: {event['run_dir']}")
        elif kind == events.ERROR:
            self.error_message = event.get("message")
        elif kind == events.STOPPED:
            self.log.appendPlainText(event.get("message", "stopped"))

    def _on_process_error(self, error):
        if error == QProcess.ProcessError.FailedToStart:
            self.error_message = f"could not start {trainer_program()[0]}: {self.process.errorString() if self.process else error}"
            self._finish(-1)

    def _on_finished(self, exit_code: int, _status=None):
        self._read_stdout()
        self._read_stderr()
        self._finish(exit_code)

    def _finish(self, exit_code: int):
        from napari.utils.notifications import show_info

        if self.process is None:
            return
        self.process = None
        self.exit_code = exit_code
        self._start.enabled, self._cancel.enabled = True, False
        last = self.run_dir / "last.json" if self.run_dir else None
        if exit_code == 0 and self.checkpoint is not None:
            self._bar.value = 1000
            self._status.value, warn, message = self._verdict()
            from napari.utils.notifications import show_warning

            (show_warning if warn else show_info)(message)
        elif self._cancelled:
            self.checkpoint = last if last is not None and last.is_file() else None
            if self.checkpoint is None and self.run_dir is not None:
                shutil.rmtree(self.run_dir, ignore_errors=True)  # this run's own folder, with nothing in it worth keeping
            kept = f"the last finished epoch is kept in {self.run_dir}" if self.checkpoint else "stopped before the first epoch finished: nothing was saved"
            self._status.value = f"cancelled; {kept}"
            show_info(f"Fine-tuning cancelled; {kept}.")
        else:
            self.checkpoint = last if last is not None and last.is_file() else None
            reason = self.error_message or self._last_stderr or f"the trainer exited with code {exit_code}"
            if self.run_dir is not None and self.run_dir.is_dir() and not any(self.run_dir.iterdir()):
                self.run_dir.rmdir()  # it failed before writing anything: no empty folder left behind per try
            kept = self.run_dir is not None and self.run_dir.is_dir()
            self._fail(f"{reason} (log and checkpoints in {self.run_dir})" if kept else reason)
        self._use.enabled = self.checkpoint is not None

    def _verdict(self) -> tuple[str, bool, str]:
        """(status line, whether to warn, notification) of a finished run, from its validation and its replay check."""
        switches = f"Fine-tuning finished; 'Use this model' switches the Segment widget to {self.checkpoint}."
        worse = self.worse_than_start()
        if worse:
            return (f"done, but worse than the starting model: {worse}", True,
                    f"Fine-tuning finished, but the new model is worse than the one it started from: {worse}. Keep the old model unless you know why.")
        found = self._others_start_and_best()
        if found is None:
            return (f"done: {self.checkpoint}; better on the exported cases, maybe worse on other patients", False,
                    f"{switches} It was validated on the exported cases only: on other patients' real scans such a fine-tune segmented worse "
                    "than the model it started from (README, 'Fine-tuning on one corrected case'), so check its masks of other scans closely.")
        start, best = found
        others = self._others_words(start, best)
        if events.fell_by(start, best) > events.OTHERS_TOLERANCE:
            return (f"done, better on the exported cases but worse on other patients: {others}", True,
                    f"Fine-tuning finished: the new model fits the exported cases better, but segments other patients worse ({others}). "
                    "Keep the old model for new patients.")
        if self.others_learnt == len(self.others_cases):
            return f"done: {self.checkpoint}; better on the exported cases, but the check cannot tell how new patients fare: {others}", True, f"{switches} {UNTOLD_CHECK}"
        return (f"done: {self.checkpoint}; better on the exported cases, and other patients held: {others}", False,
                f"{switches} On other patients ({others}) it held, though a few cases say little: check its masks closely.")

    def worse_than_start(self) -> str | None:
        """Words saying how the best validated epoch falls below the starting model (epoch 0), or None if it does not."""
        start, best_epoch = dict(self.dice).get(0), self._best_epoch()
        if start is None or best_epoch is None:
            return None

        def mean(dice: dict) -> float:  # the trainer's mean_dice
            return sum(dice[r] for r in REGIONS) / len(REGIONS)

        best = dict(self.dice)[best_epoch]
        if mean(best) >= mean(start):
            return None
        what = DICE_AXIS.get(self.validation_kind, "Dice")  # Dice: a name, capitalised mid-sentence too
        return f"{what}: mean {mean(best):.3f} after against {mean(start):.3f} before (" + ", ".join(f"{r} {start[r]:.2f} -> {best[r]:.2f}" for r in REGIONS) + ")"

    def _best_epoch(self) -> int | None:
        """The epoch of the best checkpoint: the first with the highest validation mean Dice (as the trainer keeps it)."""
        later = [(e, d) for e, d in self.dice if e > 0]
        return max(later, key=lambda item: sum(item[1][r] for r in REGIONS))[0] if later else None

    def _others_start_and_best(self) -> tuple[dict, dict] | None:
        """The kept-out replay cases' Dice at the start and at the best epoch (None: not checked at both)."""
        start, best = dict(self.others).get(0), dict(self.others).get(self._best_epoch())
        return None if start is None or best is None else (start, best)

    def _others_words(self, start: dict, best: dict) -> str:
        """The kept-out replay cases' Dice at the start and at the best epoch, in words."""
        learnt = f"{self.others_learnt} of them learnt by the starting model" if self.others_learnt else "none learnt by the starting model"
        return (f"{len(self.others_cases)} original case(s) kept out of the replay ({learnt}), "
                + ", ".join(f"{r} {start[r]:.2f} -> {best[r]:.2f}" for r in REGIONS))

    def _fail(self, message: str):
        from napari.utils.notifications import show_error

        self._status.value = "fine-tuning failed"
        show_error(f"Fine-tuning failed: {message}")

    # ------------------------------------------------------------------ result

    def use_model(self):
        """Switch the Segment widget to the fine-tuned checkpoint; re-segment when asked. Returns its worker."""
        if self.checkpoint is None:
            return None
        segment = self._segment_widget()
        if segment is None:
            _, segment = self._viewer.window.add_plugin_dock_widget("napari-sevnet", "Segment")
        segment.set_checkpoint(self.checkpoint)
        self._status.value = f"Segment now uses {self.checkpoint}"
        return segment.run() if self._rerun.value else None

    def _draw(self):
        self.figure.clear()
        ax = self.figure.add_subplot(111)
        if self.losses:
            epochs, losses = zip(*self.losses)
            ax.plot(epochs, losses, "k.-", label="loss")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("training loss")
        if self.dice:
            twin = ax.twinx()
            for region in REGIONS:
                twin.plot([e for e, _ in self.dice], [d[region] for _, d in self.dice], "o-", color=REGION_COLOURS[region], label=f"Dice {region}")
            for region in REGIONS if self.others else ():
                twin.plot([e for e, _ in self.others], [d[region] for _, d in self.others], "s--", color=REGION_COLOURS[region], alpha=0.6,
                          label=f"{region}, other patients")
            twin.set_ylim(0, 1)
            twin.set_ylabel(DICE_AXIS.get(self.validation_kind, "Dice") + (" (solid)" if self.others else ""))
            twin.legend(loc="lower right", fontsize="small", ncol=2 if self.others else 1)  # two columns: own and other patients side by side
        self.canvas.draw_idle()


def _minutes(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 60}:{seconds % 60:02d}"
