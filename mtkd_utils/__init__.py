"""mtkd_utils: the thin package behind the mtkd notebooks (multi-task knowledge distillation on fundus photographs)."""
__version__ = "0.1.0"
