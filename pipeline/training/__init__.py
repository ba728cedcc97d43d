"""Policy training: SFT / fine-tuning on transformers.Trainer (sft), PPO (ppo, ppo_math), and the
orchestration of version 0 (base_policy). Torch is imported by the modules, not by this package."""
