"""StyleDeck entry point: `python main.py` opens the window; `python main.py <command> [options]` runs
the command line (`python main.py --help` lists the commands).

The __main__ guard matters: fine-tuning starts child processes with the "spawn" method, which
re-imports this file in the child.
"""
import sys
from typing import Sequence


def main(argv: Sequence[str]) -> int:
    argv = list(argv)
    from app import APP_FLAGS
    if not argv or argv[0].split("=", 1)[0] in APP_FLAGS:  # no command, or only the window's flags
        from app import run_app
        return run_app(argv)
    from engine.cli import main as cli_main
    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
