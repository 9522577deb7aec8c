"""Fine-tuning: chat data, LoRA/QLoRA training, RAG-aware examples, and adapter merge.

Runs on the build machine (torch, transformers, peft, bitsandbytes). The device never imports
this package; it receives the merged model as ONNX inside a bundle.

Workflow:
    expert train --base var/models/smollm2 --data examples/plant/qa/train.jsonl \\
        --method qlora --out var/adapters/plant-qlora
    expert merge --base var/models/smollm2 --adapter var/adapters/plant-qlora \\
        --out var/models/smollm2-plant

Several GPUs: the training entry point is plain Hugging Face Trainer code, so
    accelerate launch --num_processes 2 -m appliance.cli train --base ... --data ... --out ...
runs data-parallel; only the main process writes metrics and the finished adapter.
"""
