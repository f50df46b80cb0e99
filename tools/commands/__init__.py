"""User commands as scripts: thin wrappers of grpose.app (`grpose-eval`, `grpose-generate`)."""
