"""Typed errors: every failure a user can act on, with a message fit to show them."""


class StyleDeckError(Exception):
    """Base of every error a user can act on; str(exc) is the message we show."""


class UnsafePickleError(StyleDeckError):
    """A pickle asked for a global that no network file needs; nothing in it was run."""


class UnsupportedNetworkError(StyleDeckError):
    """A network class or init kwarg that StyleDeck cannot build."""


class CorruptFileError(StyleDeckError):
    """A file that is truncated, of the wrong format, or holds tensors of the wrong shape."""


class NetworkFileNotFoundError(StyleDeckError, FileNotFoundError):
    """The network file does not exist (or is a folder)."""


class DeviceOutOfMemoryError(StyleDeckError):
    """The device ran out of memory; the previous state is kept."""


class Cancelled(StyleDeckError):
    """The user stopped a job; not a failure."""
