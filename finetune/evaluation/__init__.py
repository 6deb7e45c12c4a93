"""Scoring the trained model: validation metrics and plots, the grid of its worst
mistakes (with Grad-CAM heat maps), and the competition's submission file."""
