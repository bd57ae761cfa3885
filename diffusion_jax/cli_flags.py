"""Command-line parsing shared by the entry scripts: every bad flag is one `error:` line."""

import sys

from absl import flags


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parsing, with a bad flag or a mistyped or ill-typed --config override in one line.

  Pass it to `absl.app.run(main, flags_parser=parse_flags)`.
  """
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    print(f"error: {e}", file=sys.stderr)
  except (AttributeError, KeyError) as e:
    print(f"error: no such config field {_message(e)} (see configs/default.py)", file=sys.stderr)
  except (TypeError, ValueError) as e:
    print(f"error: invalid --config override: {e}", file=sys.stderr)
  sys.exit(1)


def _message(error: BaseException) -> str:
  """The text of an error that ml_collections may have wrapped in another, on one line.

  A mistyped field arrives as AttributeError(KeyError("'field'\\nDid you mean ...?")), whose
  plain str() would print the inner message's quotes and newline escaped.
  """
  while error.args and isinstance(error.args[0], BaseException):
    error = error.args[0]
  text = str(error.args[0]) if error.args else str(error)
  return "; ".join(line.strip() for line in text.splitlines() if line.strip())
