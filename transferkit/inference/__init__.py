"""Use what was trained: read checkpoints, predict, evaluate and export (after callbacks, before run)."""
