"""Faithful local stand-ins for NVIDIA's Jetson tools (L4T r36 BSP, JetPack's
apt repository, TensorRT-LLM 0.12).

    from fakes.jetson.fake_l4t import make_bsp, make_sample_rootfs
    from fakes.jetson.fake_sysfs import make_usb_sysfs
    from fakes.jetson.fake_trtllm import install_fake_trtllm
    from fakes.jetson.fake_trtllm_wheel import make_examples, make_wheel, make_wheelhouse
    from fakes.jetson.fake_jetpack_repo import make_repo

The fake tools are Python scripts (tools/*.py) installed under NVIDIA's file names; they
check their command lines like the real ones, fail like them and write what they write.
Nothing here touches the network, a GPU or a board.
"""
