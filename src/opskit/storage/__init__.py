"""The journal: every table and every query (events, deploys, quarantine, kv, outbox). No SQL lives anywhere else."""
