"""Errors that end a run with one clear line instead of a traceback."""


class CurvzoError(Exception):
    """Base class: the message is shown to the user as is, on one line."""


class ConfigError(CurvzoError):
    """An invalid config value or command-line override."""


class DataError(CurvzoError):
    """A missing data directory or file, or a malformed data line."""


class ModelLoadError(CurvzoError):
    """A model or tokenizer that cannot be loaded (typically offline)."""


class RunDirectoryError(CurvzoError):
    """A run directory that this job may neither resume nor start in; the job leaves it untouched."""
