"""`python -m mtkd_utils.decoding_choice`: the validation probe that chooses a preset's T3 decoder (the code lives in mtkd_utils/tools/decoding_choice.py)."""
from mtkd_utils.tools.decoding_choice import main

if __name__ == "__main__":
    main()
