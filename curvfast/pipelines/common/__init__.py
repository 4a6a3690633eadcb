"""What the pipelines share: the training loop, subset/shadow training, DP training, figures, run folders
and the command-line contract."""
