"""Fine-tuning stage: `python -m finetune`."""
