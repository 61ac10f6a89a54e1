"""`python -m lmjax.train --config ... --workdir ...` is `lmjax train ...`."""
import sys

from lmjax.commands import main

sys.exit(main(["train", *sys.argv[1:]]))
