"""`python -m mtkd_utils.bench`: the training-speed benchmark (the code lives in mtkd_utils/tools/bench.py)."""
from mtkd_utils.tools.bench import main

if __name__ == "__main__":
    main()
