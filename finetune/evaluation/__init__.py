"""Scoring the trained model: validation metrics and plots, the grid of its worst
mistakes, and the competition's submission file."""
