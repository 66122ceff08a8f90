"""What the operator reads: status and events."""
