"""Policy training: SFT / fine-tuning on transformers.Trainer (sft) and PPO (ppo, ppo_math); version 0 is
made in pipeline.v0. Torch is imported by the modules, not by this package."""
