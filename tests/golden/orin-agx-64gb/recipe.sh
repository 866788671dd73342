# TensorRT-LLM 0.12.0-jetson for CUDA sm_87, run on the device (engines are specific to the GPU and the TensorRT version)
# the on-device TensorRT-LLM build and its OpenAI server unit are not part of this builder yet; use engine.kind: llama.cpp (CUDA, built on the device) on Jetson until they land
python3 examples/quantization/quantize.py --model_dir MODEL --dtype float16 --qformat int4_awq --awq_block_size 128 --output_dir CHECKPOINT --calib_size 32
trtllm-build --checkpoint_dir CHECKPOINT --output_dir ENGINE --gemm_plugin float16 --max_batch_size 8 --max_input_len 4096 --max_seq_len 8192 --max_num_tokens 8192
