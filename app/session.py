"""The edit session: the current EditState plus undo/redo history, on the GUI thread."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from PySide6.QtCore import QObject, Signal

if TYPE_CHECKING:
    from engine import EditState

log = logging.getLogger(__name__)

MAX_HISTORY = 200  # undo steps kept; each is a small frozen value, so this is cheap


class EditSession(QObject):
    """Holds the one EditState the window shows; every edit goes through apply().

    A slider drag records one undo step when it starts (begin_drag) and then applies its
    intermediate values with record=False, so one drag is one undo step.
    """

    changed = Signal(object)            # the new EditState
    undo_changed = Signal(bool, bool)   # can_undo, can_redo
    drag_changed = Signal(bool)         # True when a drag starts, False when it ends

    def __init__(self, state: EditState | None = None, parent: QObject | None = None):
        super().__init__(parent)
        self._state = state
        self._undo: list[EditState] = []
        self._redo: list[EditState] = []
        self._dragging = False

    @property
    def state(self) -> EditState | None:
        return self._state

    @property
    def dragging(self) -> bool:
        return self._dragging

    @property
    def can_undo(self) -> bool:
        return bool(self._undo)

    @property
    def can_redo(self) -> bool:
        return bool(self._redo)

    def apply(self, new: EditState, *, record: bool = True) -> None:
        """Make `new` the current state; record=False during a drag (begin_drag recorded it)."""
        if new == self._state:
            return  # nothing changed: no signal, no render
        if record and self._state is not None:
            self._push(self._undo, self._state)
            self._redo.clear()
        self._state = new
        self.changed.emit(new)
        self._emit_undo()

    def reset(self, state: EditState) -> None:
        """A new network: start a fresh history at `state`."""
        self._undo.clear()
        self._redo.clear()
        self._dragging = False
        self._state = state
        self.changed.emit(state)
        self._emit_undo()

    def begin_drag(self) -> None:
        """A slider press: record the state before the drag once; the drag applies with record=False."""
        if self._dragging:
            return
        if self._state is not None:
            self._push(self._undo, self._state)
            self._redo.clear()
            self._emit_undo()
        self._dragging = True
        self.drag_changed.emit(True)

    def end_drag(self) -> None:
        """A slider release: drop the recorded step if the drag changed nothing."""
        if not self._dragging:
            return
        self._dragging = False
        if self._undo and self._undo[-1] == self._state:
            self._undo.pop()  # a click without a move is no edit
            self._emit_undo()
        self.drag_changed.emit(False)

    def undo(self) -> None:
        if not self._undo:
            return
        self._push(self._redo, self._state)
        self._state = self._undo.pop()
        self.changed.emit(self._state)
        self._emit_undo()

    def redo(self) -> None:
        if not self._redo:
            return
        self._push(self._undo, self._state)
        self._state = self._redo.pop()
        self.changed.emit(self._state)
        self._emit_undo()

    @staticmethod
    def _push(stack: list[EditState], state: EditState) -> None:
        stack.append(state)
        if len(stack) > MAX_HISTORY:
            del stack[0]

    def _emit_undo(self) -> None:
        self.undo_changed.emit(self.can_undo, self.can_redo)
