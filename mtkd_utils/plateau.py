"""`python -m mtkd_utils.plateau`: the validation probe that sets a preset's budgets (the code lives in mtkd_utils/tools/plateau.py)."""
from mtkd_utils.tools.plateau import main

if __name__ == "__main__":
    main()
