"""The errors of a training a user can fix; the command lines print them as one line."""


class TrainError(Exception):
    """A problem the user can fix: bad settings, missing data, an unusable run folder."""


class DamagedRun(TrainError):
    """A file of a run folder cannot be read or contradicts the others; nothing in the folder was changed."""


# What a command that trains several runs prints on Ctrl-C: every run resumes from its own folder.
SERIES_INTERRUPTED = ("interrupted; run the same command again: finished runs are read back, the interrupted one "
                      "resumes after its last completed epoch")

# In a series' OUT: which command's series of which model the folder holds (series.check_owner).
SERIES_OWNER_FILE = "series.json"


def why(error):
    """`error` as "Type: message" (or its type alone), for an error line that names its cause."""
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
