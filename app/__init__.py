"""StyleDeck's window (PySide6 + pyqtgraph): what a person sees and touches. No tensor maths here."""
