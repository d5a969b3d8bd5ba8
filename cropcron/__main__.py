"""`python -m cropcron` and the `cropcron` script.

A second `cropcron up` on a data dir in use is refused before the CLI's imports, which take
seconds on a busy edge box (cropcron/datadir_lock.py); `up` itself then takes the lock for real.
"""

import sys

from cropcron.datadir_lock import refuse_second_up


def main() -> int:
    refusal = refuse_second_up(sys.argv[1:])
    if refusal:
        sys.stderr.write(f"cropcron: {refusal}\n")
        return 2
    from cropcron.cli import main as cli_main

    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
