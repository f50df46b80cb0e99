"""grpose checked against outside references (mmpose itself, reference transfer results)."""
