"""The plugin object QGIS loads: the provider in ``initProcessing``, the first-use dialog in ``initGui``.

``initProcessing`` is what ``qgis_process`` calls (with ``hasProcessingProvider=yes``
in metadata.txt); the desktop calls ``initGui``, which calls it too. geo_pix2pix is
looked for, in order, on QGIS's own path (an environment the user manages), in the
folders ``install-plugin`` recorded (``install.json``), and in the plugin's own
environment (:mod:`.deps`). When none has it, the desktop offers to install it (one
dialog, :mod:`.dialog`); the install runs as a ``QgsTask`` and, once done, the provider
is registered in the running QGIS. QGIS itself keeps working whatever fails here.
"""

import json
import os
import site
import sys

from qgis.core import Qgis, QgsApplication, QgsMessageLog

from . import deps

TAG = "geo-pix2pix"
HERE = os.path.dirname(os.path.abspath(__file__))
MENU = "&geo-pix2pix"


class DependenciesMissing(ImportError):
    """geo_pix2pix or one of its dependencies cannot be imported by QGIS's Python."""


def _add_recorded_site_dirs():
    """Put the folders recorded by ``install-plugin`` first on ``sys.path``; return them."""
    path = os.path.join(HERE, "install.json")
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError):
        return []
    here = f"{sys.version_info[0]}.{sys.version_info[1]}"
    if record.get("python") != here:
        raise ImportError(
            f"geo-pix2pix was installed for Python {record.get('python')} ({record.get('executable')}) but "
            f"QGIS runs Python {here}: install geo-pix2pix with QGIS's own Python, then run "
            "python -m geo_pix2pix qgis install-plugin with it again")
    before = list(sys.path)
    for d in record.get("site_dirs", []):
        if os.path.isdir(d) and d not in before:
            site.addsitedir(d)  # runs .pth files too (editable installs)
    added = [p for p in sys.path if p not in before]
    sys.path[:] = added + [p for p in sys.path if p not in added]
    return added


def _forget_failed_import():
    # A half-imported geo_pix2pix (found, but torch was not) must not shadow the next try.
    for name in [n for n in sys.modules if n == "geo_pix2pix" or n.startswith("geo_pix2pix.")]:
        del sys.modules[name]


def _try_import():
    try:
        from geo_pix2pix.qgis.provider import GeoPix2PixProvider
    except ModuleNotFoundError as exc:
        _forget_failed_import()
        return None, exc
    return GeoPix2PixProvider, None


def import_provider():
    """The provider class, from QGIS's path, the recorded folders or the plugin's environment."""
    provider, exc = _try_import()
    if provider is None and _add_recorded_site_dirs():
        provider, exc = _try_import()
    if provider is None:
        usable, why = deps.activate()
        if usable:
            provider, exc = _try_import()
        elif deps.status().state == "ready":  # there, but an older copy of a module is loaded
            raise DependenciesMissing(why)
    if provider is None:
        raise DependenciesMissing(
            f"geo-pix2pix cannot run: QGIS's Python ({sys.prefix}) cannot import {exc.name}; the plugin's own "
            f"environment: {deps.status().detail}")
    return provider


class GeoPix2PixPlugin:
    def __init__(self, iface):
        self.iface = iface
        self.provider = None
        self.error = None
        self.actions = []
        self.task = None  # the running InstallTask (kept: QGIS holds no Python reference)
        self.cpu = True  # the torch build of the last install, for Retry and Repair

    # -- Processing ------------------------------------------------------------------------

    def initProcessing(self):  # noqa: N802 - the name QGIS calls
        if self.provider is not None:
            return True
        try:
            provider_class = import_provider()
            self.provider = provider_class()
        except Exception as exc:  # noqa: BLE001 - any failure must leave QGIS working
            self.error = f"{exc}" if isinstance(exc, DependenciesMissing) else f"{type(exc).__name__}: {exc}"
            QgsMessageLog.logMessage(self.error, TAG, Qgis.Warning)
            return False
        self.error = None
        QgsApplication.processingRegistry().addProvider(self.provider)
        return True

    # -- the desktop -----------------------------------------------------------------------

    def initGui(self):  # noqa: N802 - the name QGIS calls
        ready = self.initProcessing()
        if self.iface is None:
            return
        from qgis.PyQt.QtCore import QTimer
        from qgis.PyQt.QtWidgets import QAction

        for text, slot in (("Install or repair dependencies…", self.show_dependency_dialog),
                           ("Remove installed dependencies…", self.confirm_uninstall)):
            action = QAction(text, self.iface.mainWindow())
            action.triggered.connect(slot)
            self.iface.addPluginToMenu(MENU, action)
            self.actions.append(action)
        if not ready:
            # after QGIS has finished starting: a dialog during start-up hides behind the splash screen
            QTimer.singleShot(0, self.show_dependency_dialog)

    def show_dependency_dialog(self):
        from .dialog import DependencyDialog

        dialog = DependencyDialog(self, self.iface.mainWindow() if self.iface else None)
        dialog.exec_()

    def start_install(self, cpu=True, repair=False):
        """Install (or repair) in a background task; returns the task. The UI stays responsive."""
        from .dialog import InstallTask

        if self.task is not None:  # one install at a time; cleared when it ends
            return self.task
        self.cpu = cpu
        self.task = InstallTask(cpu=cpu, repair=repair, on_done=self.install_finished)
        QgsApplication.taskManager().addTask(self.task)
        if self.iface is not None:
            self.iface.messageBar().pushInfo(TAG, "installing geo-pix2pix's dependencies in the background: "
                                                  "progress in the task manager (status bar)")
        return self.task

    def install_finished(self, result, error):
        """Called on the main thread when the task ends: register the provider, or say what failed."""
        self.task = None  # QGIS deletes the finished task's C++ object: only its Python side is left
        if error is None:
            usable, why = deps.activate()
            if usable and self.initProcessing():
                self._message(Qgis.Success, f"geo-pix2pix is ready ({why}): Processing toolbox ▸ geo-pix2pix, or "
                                            "from geo_pix2pix.qgis import render_layer in the Python console")
            else:
                self._message(Qgis.Warning, f"geo-pix2pix was installed; {self.error or why}. Restart QGIS to use it")
            return
        self._message(Qgis.Critical, str(error), buttons=True, log_path=getattr(error, "log_path", None))

    def _message(self, level, text, buttons=False, log_path=None):
        QgsMessageLog.logMessage(text, TAG, level)
        if self.iface is None:
            return
        bar = self.iface.messageBar()
        item = bar.createMessage(TAG, text)
        if buttons:
            from qgis.PyQt.QtWidgets import QPushButton

            for label, repair in (("Retry", False), ("Repair", True)):
                button = QPushButton(label)
                button.clicked.connect(lambda _=False, r=repair: self.start_install(cpu=self.cpu, repair=r))
                item.layout().addWidget(button)
            if log_path:
                from qgis.PyQt.QtCore import QUrl
                from qgis.PyQt.QtGui import QDesktopServices

                button = QPushButton("Open log")
                button.clicked.connect(lambda: QDesktopServices.openUrl(QUrl.fromLocalFile(str(log_path))))
                item.layout().addWidget(button)
        bar.pushWidget(item, level, 0 if level == Qgis.Critical else 10)

    def confirm_uninstall(self):
        from qgis.PyQt.QtWidgets import QMessageBox

        root = deps.environment_root()
        answer = QMessageBox.question(
            self.iface.mainWindow(), TAG, f"Remove geo-pix2pix's dependencies from {root}? (The plugin stays; "
            "it will offer to install them again.)")
        if answer == QMessageBox.Yes:
            self.uninstall()

    def uninstall(self):
        """Remove the plugin's environment; the provider goes with it (restart to unload torch)."""
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
        root = deps.uninstall()
        self._message(Qgis.Info, f"removed {root}; restart QGIS to unload the modules already imported")
        return root

    def unload(self):
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
        for action in self.actions:
            self.iface.removePluginMenu(MENU, action)
        self.actions = []
