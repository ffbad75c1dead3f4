"""The mistakes a user can make, as exception types the command line prints in one line.

Each subclasses the built-in type a Python caller would expect (``ValueError``,
``FileNotFoundError``…), so code and tests that catch those keep working; the command line
prints any ``FaevalError`` as ``faeval: error: <message>`` with exit code 2 and no traceback.
Anything else that escapes is a bug in faeval and keeps its traceback.
"""

from __future__ import annotations


class FaevalError(Exception):
    """A mistake in what faeval was asked to do; its message names the value and the way out."""


class ConfigError(FaevalError, ValueError):
    """An option value that faeval cannot run with."""


class DataNotFoundError(FaevalError, FileNotFoundError):
    """A data set, run or file that is not where faeval was told to look."""


class DataError(FaevalError, ValueError):
    """A data file that is there but cannot be read as what it should be."""


class CheckpointError(FaevalError, ValueError):
    """A file that is not a readable faeval checkpoint, or not this run's."""


class IncompleteCheckpoint(FaevalError, RuntimeError):
    """A checkpoint without the state its method's credit needs (feedback, helper nets)."""


class RunFolderTaken(FaevalError, FileExistsError):
    """A run was pointed at a folder that already holds another run."""


class UserCodeError(FaevalError, RuntimeError):
    """A user's own class (``--model mypkg.MyMethod``) raised while faeval built it.

    The message names the class, the user's error and the line of their code that raised it;
    the user's exception is kept as the cause, with its whole traceback, for Python callers.
    """


class TrainingDiverged(FaevalError, FloatingPointError):
    """Training or a relaxation diverged for a reason an option can fix."""


def user_error(err: BaseException) -> FaevalError | None:
    """The ``FaevalError`` behind ``err`` (itself, or its cause or context), if any.

    Libraries between the command line and faeval's code (jsonargparse instantiating the
    classes) wrap the errors they see; the user's mistake is the one at the bottom.
    """
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, FaevalError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None
