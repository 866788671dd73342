"""edge-llm builder: device profile in, verified LLM appliance out."""

__version__ = "0.1.0"
