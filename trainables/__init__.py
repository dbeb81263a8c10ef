"""Data, models and the training loop: plain PyTorch, nothing of Ray Tune."""
