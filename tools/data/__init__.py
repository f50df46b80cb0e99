"""Write or convert datasets on disk (the synthetic pose set, pickle-free pose files)."""
