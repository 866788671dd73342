"""Engines: everything that differs per inference engine lives behind this seam.

One module or package per engine (llama_cpp, trtllm), each with an `ENGINE`, an
instance of contracts.Engine; builder/plugins.py finds them. Adding an engine is adding
a module here (or naming one in EDGE_LLM_ENGINES) and listing its kind in the targets
that can run it: see docs/architecture.md.
"""
