"""The one exception type for mistakes a user can make (bad path, corrupt file, impossible option)."""


class PixelDiffusionError(Exception):
    """A problem the user can fix; the CLI prints its message on one line and exits non-zero."""


class ConfigError(PixelDiffusionError, ValueError):
    """An option outside its valid set or range."""
