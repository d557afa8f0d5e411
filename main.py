"""StyleDeck entry point: `python main.py <command> [options]`; `python main.py --help` lists the commands.

With no command this will open the app; until the app lands it prints the command-line help.
The __main__ guard matters: fine-tuning starts child processes with the "spawn" method, which
re-imports this file in the child.
"""
import sys

from engine.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
