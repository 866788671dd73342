# TensorRT Edge-LLM 0.9.1 for CUDA sm_87: the export runs on the build host (quantization on a CUDA GPU), llm_build on the device (engines are specific to the GPU and the TensorRT version), from /opt/tensorrt-edgellm/build; a pre-quantized checkpoint (Qwen's -AWQ, -GPTQ-Int4) skips the quantization and exports MODEL
# build host, from an unquantized checkpoint (a CUDA GPU)
tensorrt-edgellm-quantize llm --model_dir MODEL --output_dir QUANTIZED --quantization int4_awq --dtype fp16 --device cuda
# build host
tensorrt-edgellm-export QUANTIZED ONNX
# device
llm_build --onnxDir ONNX --engineDir ENGINE --maxInputLen 4096 --maxKVCacheCapacity 8192 --maxBatchSize 1
