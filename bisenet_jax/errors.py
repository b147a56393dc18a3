"""The one exception type for mistakes a user can fix (bad paths, files, config values).

Entry points catch `UserError` and print its message as a single line, so every message
must say what is wrong and what to do about it.
"""


class UserError(Exception):
  """An input problem the user can fix; the message is shown as-is, without a traceback."""
