"""The errors of a training a user can fix; the command lines print them as one line."""


class TrainError(Exception):
    """A problem the user can fix: bad settings, missing data, an unusable run folder."""


class DamagedRun(TrainError):
    """A file of a run folder cannot be read or contradicts the others; nothing in the folder was changed."""


def why(error):
    """`error` as "Type: message" (or its type alone), for an error line that names its cause."""
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
