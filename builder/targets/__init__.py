"""Targets: everything that differs per hardware family lives behind this seam.

One package per family (x86_gateway, raspberry_pi5, jetson_orin), each with a
`TARGET`, an instance of contracts.Target; builder/plugins.py finds them. Adding
hardware is adding a package here (or naming one in EDGE_LLM_TARGETS) and a profile:
see docs/architecture.md.
"""
