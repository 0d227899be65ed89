"""`python -m mtkd_utils.lab`: JupyterLab for the workbook (the code lives in mtkd_utils/tools/lab.py)."""
import sys

from mtkd_utils.tools.lab import main

if __name__ == "__main__":
    main(sys.argv[1:])
