"""The neutral base layer: errors, file I/O, record types, version names, small maths, accelerator
placement. No domain logic; imports nothing of reward_models, sampling, eval or pipeline."""
