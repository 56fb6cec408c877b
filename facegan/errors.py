"""The errors a user can cause, at the bottom of the layers so every layer (and the CLI, which must
not import torch to print --help) can name them without importing what raises them.

Each message names the file, flag or field and what was expected; `facegan` prints it on one line
and exits with status 2 (facegan.cli.main), never with a traceback.
"""

from __future__ import annotations


class UserError(ValueError):
    """Bad input from the user (a config, a flag, a file); the message says what and where."""


class ConfigError(UserError):
    """A config value is unknown, mistyped or out of range; the message names the field."""


class DataError(UserError):
    """Bad input data (missing file, malformed row, no usable images): the message names what and where."""


class CheckpointError(UserError):
    """The checkpoint is missing, unreadable or does not fit the model being trained."""


class InceptionWeightsError(UserError):
    """An Inception weights file is missing or is not one of the two accepted formats."""


class FaceModelError(UserError):
    """dlib or the face_recognition_models package is missing, or one of its model files is damaged."""


class OutputError(UserError):
    """A file cannot be written (disk full, read-only, quota); what was written before stays intact."""


class Interrupted(Exception):
    """Ctrl-C, caught where the command knows what it leaves (e.g. the checkpoint to resume from):
    `facegan` prints the message on one line and exits with status 130."""
