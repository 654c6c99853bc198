"""The project's own error base: bad input whose one-line message names the file (or option) and the fix.

Every stage's error types derive from it, so a command line catches exactly these (exit 2, one line) and a
bug (KeyError, AttributeError, ...) still ends in a traceback instead of passing for a config problem.
"""


class EdgeVisionError(Exception):
    """Bad input: a file, config, model, dataset or source that the message names, with the fix."""
