"""Training (notebooks 02-03): the multi-task model, its losses, the teachers' soft targets and the training loop.

Holds the model (model), per-example losses (losses), the noised student view (noise), teachers as one source of
soft targets (distill), the loop with early stopping and resume (engine), device and determinism (runtime),
checkpoints, the metrics validation and test read use (metrics), the workbook's training steps (steps) and trained
models back from their run folders (reload).
May import: data and the top-level modules — never analysis, grid or tools.
"""
