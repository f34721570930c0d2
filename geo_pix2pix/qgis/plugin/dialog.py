"""The first-use dialog and the background task that installs the dependencies.

One dialog says what is missing and where it would go, offers the CPU build of torch
or (where ``nvidia-smi`` sees a GPU) the CUDA build, and starts an :class:`InstallTask`:
QGIS's task manager shows its progress and can cancel it; the UI stays responsive.
"""

from qgis.core import QgsTask
from qgis.PyQt.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QLabel,
    QRadioButton,
    QVBoxLayout,
)

from . import deps


class InstallTask(QgsTask):
    """:func:`deps.install` in QGIS's task manager; ``on_done(result, error)`` on the main thread."""

    def __init__(self, cpu=True, repair=False, on_done=None):
        what = "Repairing" if repair else "Installing"
        super().__init__(f"{what} geo-pix2pix's dependencies (torch {'CPU' if cpu else 'CUDA'})", QgsTask.CanCancel)
        self.cpu, self.repair, self.on_done = cpu, repair, on_done
        self.result = None
        self.error = None
        self.messages = []
        self.profile = deps.environment_root().parent  # read here: the worker thread must not ask QGIS

    def _progress(self, percent, message):
        self.setProgress(percent)
        self.messages.append((percent, message))

    def run(self):
        try:
            self.result = deps.install(self.cpu, profile=self.profile, repair=self.repair, progress=self._progress,
                                       is_canceled=self.isCanceled)
        except Exception as exc:  # noqa: BLE001 - reported by finished(), on the main thread
            self.error = exc
            return False
        return True

    def finished(self, ok):  # noqa: N802 - QGIS calls it on the main thread
        if not ok and self.error is None:
            self.error = deps.InstallCanceled("the install was canceled: press Repair to finish it "
                                              f"(log: {deps.environment_root(self.profile) / 'install.log'})")
        if self.on_done is not None:
            self.on_done(self.result, self.error)


class DependencyDialog(QDialog):
    """Install, repair or reinstall the plugin's environment: one question, one button."""

    def __init__(self, plugin, parent=None):
        super().__init__(parent)
        self.plugin = plugin
        self.setWindowTitle("geo-pix2pix: dependencies")
        current = deps.status()
        self.state = current.state
        self.cuda = deps.cuda_choice()
        layout = QVBoxLayout(self)
        why = plugin.error or current.detail
        verb = {"ready": "Reinstall", "broken": "Repair", "incomplete": "Repair"}.get(current.state, "Install")
        self.label = QLabel(
            f"<p>{why}</p><p>geo-pix2pix needs PyTorch, rasterio and the geo-pix2pix package "
            f"{deps.plugin_version()}. {verb} them into a folder of this plugin, inside your QGIS profile:<br>"
            f"<code>{current.root}</code><br>QGIS's own Python is not changed. The CPU build downloads "
            "about 300 MB, the CUDA build several GB; the full log is kept in install.log there.</p>")
        self.label.setWordWrap(True)
        layout.addWidget(self.label)
        self.cpu_button = QRadioButton("CPU build of PyTorch")
        self.cpu_button.setChecked(True)
        layout.addWidget(self.cpu_button)
        cuda_text = (f"CUDA build of PyTorch ({self.cuda[1]}; index {self.cuda[0]})" if self.cuda
                     else "CUDA build of PyTorch (no NVIDIA GPU found by nvidia-smi)")
        self.cuda_button = QRadioButton(cuda_text)
        self.cuda_button.setEnabled(self.cuda is not None)
        if self.cuda is not None:
            self.cuda_button.setChecked(True)
        layout.addWidget(self.cuda_button)
        self.buttons = QDialogButtonBox(QDialogButtonBox.Cancel)
        self.install_button = self.buttons.addButton(verb, QDialogButtonBox.AcceptRole)
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        layout.addWidget(self.buttons)

    def accept(self):
        self.plugin.start_install(cpu=not self.cuda_button.isChecked(), repair=self.state != "missing")
        super().accept()
