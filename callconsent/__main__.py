import sys

from callconsent.cli import main

sys.exit(main())
