"""prunelab.tasks (the lead's package; base.py copied from main's working tree until it lands)."""
