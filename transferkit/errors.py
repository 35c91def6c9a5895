"""User-caused errors: each one carries a one-line message naming the field or file and the fix."""


class TransferkitError(Exception):
    """An error the user can fix; the CLI prints it on one line and exits with code 2."""


class SpecError(TransferkitError):
    """A recipe is malformed: unknown key, wrong type, bad value."""


class NotRegisteredError(TransferkitError, KeyError):
    """A name is missing from a registry."""

    def __str__(self) -> str:  # KeyError would wrap the message in quotes
        return str(self.args[0]) if self.args else ""


class DataError(TransferkitError):
    """A data set is missing, empty, inconsistent or holds an unreadable file."""


class DownloadError(TransferkitError):
    """A download failed or its content did not match the expected hash."""


class WeightsError(TransferkitError):
    """A weights file is missing, unsafe, or does not fit the model."""


class DeviceError(TransferkitError):
    """A requested device is absent or ran out of memory."""


class TrainingError(TransferkitError):
    """Training stopped on a condition the user must address (non-finite loss, out of memory)."""


class WriteError(TransferkitError, OSError):
    """A file that cannot be written: the disk is full, the file too large, or the folder read-only or not ours.

    An OSError too, so code that falls back when a cache cannot be written keeps doing so."""
