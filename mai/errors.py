"""The one base class of errors a user can fix. The CLIs print these as one line
(`MAI_DEBUG=1` shows the traceback) and exit with status 2."""


class MaiError(Exception):
    """An error whose message says what went wrong and what to do."""
