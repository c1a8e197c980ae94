"""mpcft: secure multi-party computation for private Transformer fine-tuning."""
