"""`python -m mtkd_utils.batch`: the batch runner (the code lives in mtkd_utils/grid/batch.py)."""
import sys

from mtkd_utils.grid.batch import main

if __name__ == "__main__":
    sys.exit(main())
