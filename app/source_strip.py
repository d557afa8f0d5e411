"""The source strip: the base latent and the style sources, each a seed to type, step or randomise."""
from __future__ import annotations

import dataclasses
import random
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (QFrame, QHBoxLayout, QLabel, QPushButton, QScrollArea, QSpinBox, QToolButton,
                               QVBoxLayout, QWidget)

import engine

MAX_SEED = 2**31 - 1  # QSpinBox holds a C int; NVIDIA's seeds go to 2**32 - 1, these cover everyday use


class SeedSpinBox(QSpinBox):
    """A seed: arrow keys and the wheel step it; typing commits on Enter or focus out."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setRange(0, MAX_SEED)
        self.setKeyboardTracking(False)  # "1234" typed is one change, not four renders
        self.setAccelerated(True)
        self.setMinimumWidth(90)


class SourceCard(QFrame):
    """One source: a title, a seed box (or the label of a stored latent), random and remove buttons."""

    def __init__(self, index: int, source: Any, parent: QWidget | None = None):
        super().__init__(parent)
        self.index = index
        self.setFrameShape(QFrame.StyledPanel)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 4, 6, 4)
        title = QHBoxLayout()
        self.title = QLabel("Base" if index == 0 else f"Style {index}")
        self.title.setStyleSheet("font-weight: bold")
        title.addWidget(self.title)
        title.addStretch(1)
        self.remove_button = QToolButton(text="✕", toolTip="Remove this style source")
        self.remove_button.setVisible(index > 0)
        title.addWidget(self.remove_button)
        layout.addLayout(title)
        row = QHBoxLayout()
        self.seed_box = SeedSpinBox()
        self.seed_box.setPrefix("seed ")
        self.random_button = QToolButton(text="Random", toolTip="A random seed")
        row.addWidget(self.seed_box)
        row.addWidget(self.random_button)
        layout.addLayout(row)
        if source.seed is None:  # a stored latent (a projected photo, later): nothing to step
            self.seed_box.setEnabled(False)
            self.random_button.setEnabled(False)
            self.seed_box.setSpecialValueText(source.label or "latent")
            self.seed_box.setValue(0)
        else:
            self.seed_box.setValue(min(source.seed, MAX_SEED))


class SourceStrip(QWidget):
    """Base + style sources of the session, in a horizontal strip under the canvas."""

    source_added = Signal(int)  # index of the new style source

    def __init__(self, session: Any, parent: QWidget | None = None):
        super().__init__(parent)
        self.session = session
        self.cards: list[SourceCard] = []
        self._rng = random.Random()
        outer = QHBoxLayout(self)
        outer.setContentsMargins(4, 2, 4, 2)
        self._scroll = QScrollArea()
        self._scroll.setWidgetResizable(True)
        self._scroll.setFrameShape(QFrame.NoFrame)
        self._scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarAsNeeded)
        self._scroll.setVerticalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        self._inner = QWidget()
        self._cards_layout = QHBoxLayout(self._inner)
        self._cards_layout.setContentsMargins(0, 0, 0, 0)
        self._cards_layout.addStretch(1)
        self._scroll.setWidget(self._inner)
        outer.addWidget(self._scroll, 1)
        self.add_button = QPushButton("+ Style source")
        self.add_button.setToolTip("Add a seed whose styles the Mixing sliders blend into the base")
        self.add_button.clicked.connect(lambda: self.add_style_source())
        outer.addWidget(self.add_button)
        self.setMaximumHeight(96)
        session.changed.connect(self._redraw)
        self._redraw(session.state)

    # --- actions (also what tests call) ---------------------------------------------------------
    def add_style_source(self, seed: int | None = None) -> int:
        """Append a style source (a random seed unless given) at amount 0; returns its index."""
        state = self.session.state
        if state is None:
            return -1
        seed = self._rng.randrange(MAX_SEED) if seed is None else int(seed)
        self.session.apply(engine.with_source(state, engine.Source.from_seed(seed)))
        index = len(self.session.state.sources) - 1
        self.source_added.emit(index)
        return index

    def remove_source(self, index: int) -> None:
        if self.session.state is not None and index > 0:
            self.session.apply(engine.without_source(self.session.state, index))

    def set_seed(self, index: int, seed: int) -> None:
        """Source `index` becomes `seed`; its mixing weights stay."""
        state = self.session.state
        if state is None or not 0 <= index < len(state.sources):
            return
        old = state.sources[index]
        if old.seed == seed:
            return
        sources = list(state.sources)
        sources[index] = engine.Source.from_seed(seed, old.class_idx)
        self.session.apply(dataclasses.replace(state, sources=tuple(sources)))

    def randomize(self, index: int) -> None:
        self.set_seed(index, self._rng.randrange(MAX_SEED))

    # --- redraw from the session ----------------------------------------------------------------
    def _redraw(self, state: Any) -> None:
        sources = () if state is None else state.sources
        # a card shows a seed or a stored latent; a change of kind (a projected photo as the base) rebuilds
        same_kinds = len(sources) == len(self.cards) and all(
            c.seed_box.specialValueText() == ("" if s.seed is not None else (s.label or "latent"))
            for c, s in zip(self.cards, sources))
        if same_kinds and all((c.seed_box.value() == s.seed) or (s.seed is None) for c, s in zip(self.cards, sources)):
            return
        if same_kinds:
            for card, source in zip(self.cards, sources):  # same cards, new seeds: update quietly
                if source.seed is not None:
                    blocked = card.seed_box.blockSignals(True)
                    card.seed_box.setValue(min(source.seed, MAX_SEED))
                    card.seed_box.blockSignals(blocked)
            return
        for card in self.cards:
            self._cards_layout.removeWidget(card)
            card.deleteLater()
        self.cards = []
        for i, source in enumerate(sources):
            card = SourceCard(i, source)
            card.seed_box.valueChanged.connect(lambda v, i=i: self.set_seed(i, v))
            card.random_button.clicked.connect(lambda _=False, i=i: self.randomize(i))
            card.remove_button.clicked.connect(lambda _=False, i=i: self.remove_source(i))
            self._cards_layout.insertWidget(i, card)
            self.cards.append(card)
        self.add_button.setEnabled(state is not None)
