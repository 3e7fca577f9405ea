import sys

from callconsent.cli import run

sys.exit(run())
