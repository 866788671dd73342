"""The device side: tools that run on an appliance, with python3's standard library only.

The `release` role installs this package as /usr/local/lib/edge-llm/edge_llm_device/
with one small launcher per tool (DEVICE_TOOLS), so nothing here may import from the
rest of the builder (tests/test_layout.py checks it).
"""

# command on the device -> module in this package (its main(argv) is the entry point)
DEVICE_TOOLS = {
    "edge-llm-release": "release_tool",
    "edge-llm-wait-ready": "wait_ready",
    "edge-llm-engine-watchdog": "watchdog",
    "edge-llm-trtllm": "trtllm",
    "edge-llm-edgellm": "edgellm",
    "edge-llm-engine-build": "engine_cache",
}
