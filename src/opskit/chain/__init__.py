"""The nervous system: every pushed ref routed from one place (routing.py), the feature-branch chain (feature.py), the humans it waits for (approvals.py)."""
