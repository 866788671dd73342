"""Models: the catalog (catalog.py), the shape the planner sizes (shape.py), fetching
and caching the model a release carries (pipeline.py), synthetic ones (synth.py)."""
