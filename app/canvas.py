"""The image canvas: a pyqtgraph ViewBox with one ImageItem; zoom, pan, fit and pixel-exact 100%."""
from __future__ import annotations

import numpy as np
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import QVBoxLayout, QWidget  # PySide6 first, so pyqtgraph binds to it
import pyqtgraph as pg

pg.setConfigOptions(imageAxisOrder="row-major")  # numpy [H, W, 3], row 0 at the top (with invertY)


class ImageCanvas(QWidget):
    """Shows uint8 [H, W, 3] images; the mouse wheel zooms, a drag pans.

    The first image (and any image of a new size) is fitted to the view; later images of the
    same size keep the zoom and pan, so a slider drag does not jump.
    """

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.view_widget = pg.GraphicsLayoutWidget()
        self.view_widget.setBackground("#202124")
        self.view_widget.ci.setContentsMargins(0, 0, 0, 0)
        self.view = self.view_widget.addViewBox(lockAspect=True, invertY=True, enableMenu=False)
        self.view.setDefaultPadding(0.0)
        self.item = pg.ImageItem()
        self.view.addItem(self.item)
        self._image: np.ndarray | None = None
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.view_widget)

        self.fit_action = QAction("Fit to window", self, shortcut=QKeySequence("Ctrl+0"))
        self.fit_action.triggered.connect(self.fit)
        self.actual_size_action = QAction("Actual pixels (100%)", self, shortcut=QKeySequence("Ctrl+1"))
        self.actual_size_action.triggered.connect(self.actual_size)
        self.addActions([self.fit_action, self.actual_size_action])

    def set_image(self, image: np.ndarray) -> None:
        """Show `image` (uint8 [H, W, 3]); fixed levels, so colours are never rescaled."""
        new_size = self._image is None or self._image.shape[:2] != image.shape[:2]
        self._image = image
        self.item.setImage(image, autoLevels=False, levels=(0, 255))
        if new_size:
            self.fit()

    def image(self) -> np.ndarray | None:
        """The array on screen (uint8 [H, W, 3]); None before the first image."""
        return self._image

    def fit(self) -> None:
        """Zoom so the whole image fits the view."""
        if self._image is not None:
            h, w = self._image.shape[:2]
            self.view.setRange(xRange=(0, w), yRange=(0, h), padding=0.0)

    def actual_size(self) -> None:
        """Zoom to 1 image pixel = 1 screen pixel, centred on what is in view now."""
        if self._image is None:
            return
        rect = self.view.sceneBoundingRect()
        ratio = self.view_widget.devicePixelRatioF() or 1.0
        w, h = rect.width() * ratio, rect.height() * ratio   # view size in physical pixels = image pixels at 100%
        (x0, x1), (y0, y1) = self.view.viewRange()
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        self.view.setRange(xRange=(cx - w / 2, cx + w / 2), yRange=(cy - h / 2, cy + h / 2), padding=0.0)

    def zoom(self) -> float:
        """Screen pixels per image pixel along x."""
        (x0, x1), _ = self.view.viewRange()
        return self.view.sceneBoundingRect().width() / max(x1 - x0, 1e-9)

    def clear(self) -> None:
        self._image = None
        self.item.clear()

