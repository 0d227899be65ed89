"""`python -m mtkd_utils.readme`: regenerate the README's results from a finished experiment (the code lives in mtkd_utils/tools/readme.py)."""
from mtkd_utils.tools.readme import main

if __name__ == "__main__":
    main()
