import sys

from lmjax.commands import main

sys.exit(main())
