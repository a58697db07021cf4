"""Exceptions that describe user mistakes; the CLI turns them into one-line messages."""


class SADAError(Exception):
    """Base class of every error sada-audio raises for bad input or an unsupported setup."""


class ConfigError(SADAError, ValueError):
    """A SADA hyperparameter is out of range or inconsistent."""


class UnsupportedSchedulerError(SADAError, ValueError):
    """The pipeline's scheduler has no solver adapter."""


class UnsupportedModelError(SADAError, ValueError):
    """The pipeline's denoiser has no model adapter."""


class ModelNotFoundError(SADAError, OSError):
    """A model id or path could not be resolved (offline, misspelt, or missing files)."""
