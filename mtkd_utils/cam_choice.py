"""`python -m mtkd_utils.cam_choice`: the validation probe that chooses 05's CAM method and block (the code lives in mtkd_utils/tools/cam_choice.py)."""
from mtkd_utils.tools.cam_choice import main

if __name__ == "__main__":
    main()
