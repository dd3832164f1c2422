"""The one exception type for a user's mistake."""


class UserError(Exception):
    """A mistake in the user's input (bad path, bad option, bad file).

    Entry points report it as a single line on stderr and exit non-zero, without a traceback.
    The message must name the file or field and say what to do.
    """
