"""edge-llm gateway: the appliance's only public port.

An OpenAI-compatible API (chat and text completions, streaming passed through as the
engine sends it), the web chat page, API keys, a bounded request queue and Prometheus
metrics, in front of whatever engine serves on loopback (llama-server today,
TensorRT-LLM's OpenAI server on Orin later: both speak the same API).

The package is copied as it is into each release on the device
(/opt/edge-llm/releases/<id>/lib/edge_llm_gateway) and run with Debian's python3, so it
imports nothing from the rest of `builder` and keeps to what Debian bookworm ships:
aiohttp 3.8 and prometheus_client 0.16.
"""
