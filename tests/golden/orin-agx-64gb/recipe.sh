# TensorRT-LLM 0.12.0-jetson for CUDA sm_87, run on the device (engines are specific to the GPU and the TensorRT version), in /opt/TensorRT-LLM: MODEL is the release's checkpoint, CHECKPOINT and ENGINE the device's work and cache directories
python3 examples/qwen/convert_checkpoint.py --model_dir MODEL --output_dir CHECKPOINT --dtype float16 --use_weight_only --weight_only_precision int4_gptq --per_group
trtllm-build --checkpoint_dir CHECKPOINT --output_dir ENGINE --gemm_plugin float16 --max_batch_size 8 --max_input_len 4096 --max_seq_len 8192 --max_num_tokens 8192
