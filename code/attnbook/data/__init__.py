"""Data for the book's experiments: seeded synthetic tasks."""
from .synthetic import IGNORE_INDEX, partner_labels, partner_positions, partner_task, reversal_task

__all__ = ["IGNORE_INDEX", "partner_labels", "partner_positions", "partner_task", "reversal_task"]
