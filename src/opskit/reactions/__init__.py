"""Reactions: the user's own steps, run after the events they name (the journal is the bus)."""
