"""The immune system: put a commit live, gate it, revert it when it fails, freeze when the revert fails too."""
