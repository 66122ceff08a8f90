"""`opskit demo`: the seed incident, end to end, in a throw-away sandbox."""
