"""Stand-ins for NVIDIA TensorRT Edge-LLM 0.9.1 (the build host's export and quantize
tools, the device's llm_build and pybind runtime).

    from fakes.edgellm.fake_edgellm_runtime import make_runtime_tarball
    from fakes.edgellm.fake_edgellm_source import make_source_tarball
    from fakes.edgellm.fake_hf_checkpoint import make_checkpoint

The fake tools are stdlib-only Python (tools/*.py) installed under NVIDIA's file names;
they check their command lines like the real ones, fail like them and write what they
write. Nothing here touches the network or a GPU. README.md lists what each mirrors.
"""
