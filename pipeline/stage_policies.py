"""Which round stages make a policy, torch-free: pipeline.config checks rounds.plan with it (loading a
config imports no torch) and pipeline.stages.STAGES takes each stage's `policy` from it. Nothing else
decides which stage makes the policy."""

# stage -> the directory of the version it writes its policy to. The stages after it in the version start
# from that policy (pipeline.rounds.stage_parent), and the last one a plan runs becomes the version's policy/.
POLICY_DIRS = {"distill": "distill_policy", "rs": "rs_policy", "ppo": "ppo_policy"}
# distill writes its policy only when it keeps answers, so every plan also runs one of these.
ALWAYS_MAKE_A_POLICY = ("rs", "ppo")
