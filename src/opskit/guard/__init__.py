"""The guard: lockdown (the hooks' policies), verify-push, drift-scan."""
