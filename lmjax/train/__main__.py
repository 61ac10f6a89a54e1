"""`python -m lmjax.train --config ... --workdir ...` is `lmjax train ...`."""
import sys

from lmjax.cli import main

sys.exit(main(["train", *sys.argv[1:]]))
